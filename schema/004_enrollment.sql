-- 004_enrollment.sql -- enrollment tokens: a new device may register itself
-- in its hello with one of these (docs/protocol.md).
CREATE TABLE enrollment_tokens (
    id        INTEGER PRIMARY KEY,
    hash      TEXT NOT NULL UNIQUE,       -- hex SHA-256 of the token
    grp       TEXT,                       -- the group enrolled devices join
    expires   INTEGER NOT NULL,           -- ms since the epoch
    max_uses  INTEGER NOT NULL,
    uses      INTEGER NOT NULL DEFAULT 0,
    revoked   INTEGER NOT NULL DEFAULT 0,
    created   INTEGER NOT NULL
);
