-- 002_updates.sql -- the flash-parts table, the firmware store, rollouts and
-- every device's update state within them.

CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
) WITHOUT ROWID;

-- One row per part; several parts may share a JEDEC id (jedec = 0xMMDDDD).
CREATE TABLE flash_parts (
    jedec           INTEGER NOT NULL,
    part            TEXT NOT NULL,
    vendor          TEXT NOT NULL,
    size            INTEGER NOT NULL,
    uniform_4k      INTEGER NOT NULL,
    uniform_64k     INTEGER NOT NULL,
    erase_layouts   TEXT NOT NULL,
    shares_id_with  TEXT,
    source          TEXT,
    notes           TEXT,
    updated         INTEGER NOT NULL,
    PRIMARY KEY (jedec, part)
) WITHOUT ROWID;

-- Firmware images; the bytes are in DATA_DIR/firmware/<sha256>.
CREATE TABLE firmware (
    id            INTEGER PRIMARY KEY,
    version       TEXT NOT NULL UNIQUE,
    hw            TEXT NOT NULL,          -- JSON array of hardware models
    requirements  TEXT NOT NULL,          -- JSON, as uploaded
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    created       INTEGER NOT NULL
);

CREATE TABLE rollouts (
    id            INTEGER PRIMARY KEY,
    firmware      INTEGER NOT NULL REFERENCES firmware (id),
    options       TEXT NOT NULL,          -- JSON: target, stages, limits, deadlines
    state         TEXT NOT NULL,          -- paused, running, completed, aborted
    stage         INTEGER NOT NULL DEFAULT 0,
    nstages       INTEGER NOT NULL,
    reason        TEXT,                   -- why it paused or ended
    created       INTEGER NOT NULL,
    updated       INTEGER NOT NULL
);

-- Each targeted device's place in the update state machine (docs/updates.md).
-- A row is written, and committed, before the step it records is acted on.
CREATE TABLE rollout_devices (
    rollout    INTEGER NOT NULL REFERENCES rollouts (id),
    device     TEXT NOT NULL,
    stage      INTEGER NOT NULL,
    state      TEXT NOT NULL,
    reason     TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    failures   INTEGER NOT NULL DEFAULT 0,
    from_fw    TEXT,
    offset     INTEGER NOT NULL DEFAULT 0,
    deadline   INTEGER,                   -- ms: the current step fails after this
    next_try   INTEGER,                   -- ms: a retry waits until this
    updated    INTEGER NOT NULL,
    PRIMARY KEY (rollout, device)
) WITHOUT ROWID;
CREATE INDEX rollout_devices_by_device ON rollout_devices (device, state);
CREATE INDEX rollout_devices_by_state ON rollout_devices (rollout, state);
