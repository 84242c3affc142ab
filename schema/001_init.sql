-- 001_init.sql -- devices, their events, API tokens.
-- Applied once, in a transaction, when PRAGMA user_version < 1.

-- One row per registered device.  id is the 16-hex-digit device id, lower-case.
CREATE TABLE devices (
    id            TEXT PRIMARY KEY,
    secret_hash   TEXT NOT NULL,          -- hex SHA-256 of the device secret
    name          TEXT,
    grp           TEXT,                   -- "group" is an SQL keyword
    hw            TEXT,
    fw            TEXT,
    flash_jedec   INTEGER,                -- 24-bit JEDEC id from the last hello
    flash_size    INTEGER,
    flash_sfdp    TEXT,                   -- base64 SFDP from the last hello
    online        INTEGER NOT NULL DEFAULT 0,
    connected_at  INTEGER,                -- ms since the epoch
    last_seen     INTEGER,
    created       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX devices_by_group ON devices (grp, id);
CREATE INDEX devices_by_hw ON devices (hw, id);

-- Every status, device, agent and firmware line.  id is the monotonic event id
-- that log streams resume from; device is the device id as a 64-bit integer.
-- AUTOINCREMENT so that an id is never reused, even after the newest events
-- are deleted with their device.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    device  INTEGER NOT NULL,
    ts      INTEGER NOT NULL,             -- ms since the epoch
    type    INTEGER NOT NULL,             -- 0 status, 1 device, 2 agent, 3 firmware
    msg     TEXT NOT NULL
);
CREATE INDEX events_by_device ON events (device, id);

-- HTTP API bearer tokens, stored as hex SHA-256.
CREATE TABLE tokens (
    id       INTEGER PRIMARY KEY,
    hash     TEXT NOT NULL UNIQUE,
    role     TEXT NOT NULL,
    name     TEXT,
    created  INTEGER NOT NULL,
    expires  INTEGER
);
