-- 003_agents.sql -- agent code per group, each device's agent id and the
-- state its agent saved with server.save().

-- The Lua source every device of a group runs as its agent.
CREATE TABLE agent_code (
    grp      TEXT PRIMARY KEY,
    source   TEXT NOT NULL,
    version  INTEGER NOT NULL,            -- bumped on each deploy
    updated  INTEGER NOT NULL
) WITHOUT ROWID;

-- A stable, unguessable id for each device's agent: its HTTP address is
-- /agent/{agent_id}/...  Filled for existing devices at start-up.
ALTER TABLE devices ADD COLUMN agent_id TEXT;
CREATE UNIQUE INDEX devices_by_agent_id ON devices (agent_id);

-- server.save(): at most 64 KiB of JSON per device; durable across restarts
-- and migrations.
CREATE TABLE agent_state (
    device   TEXT PRIMARY KEY,
    saved    TEXT NOT NULL,
    updated  INTEGER NOT NULL
) WITHOUT ROWID;
