-- Who answered a call, and when (issue 3: agents). A call with no
-- agent_answered_at that the caller ended is an abandoned call.
ALTER TABLE calls ADD COLUMN agent_id TEXT;
ALTER TABLE calls ADD COLUMN agent_answered_at BIGINT;
CREATE INDEX calls_abandoned ON calls (agent_answered_at, ended_at);
