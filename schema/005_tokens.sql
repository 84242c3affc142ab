-- 005_tokens.sql -- API tokens with roles get revoked rather than deleted (the
-- audit trail keeps naming them), and the audit trail itself: one entry per
-- change made through the API and per refused token (docs/security.md).
ALTER TABLE tokens ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0;

CREATE TABLE audit (
    id        INTEGER PRIMARY KEY,
    ts        INTEGER NOT NULL,            -- ms since the epoch
    token_id  INTEGER,                     -- NULL: no valid token
    actor     TEXT NOT NULL,               -- the token's name, or 'anonymous'
    role      TEXT,
    addr      TEXT,                        -- the client's address
    method    TEXT NOT NULL,
    path      TEXT NOT NULL,
    status    INTEGER NOT NULL,            -- the HTTP status answered
    detail    TEXT
);
CREATE INDEX audit_by_token ON audit (token_id, id);
