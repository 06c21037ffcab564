-- Warm transfers (issue 5): one row per attempt to hand a call to an
-- agency's dispatcher, with who asked, who answered, when, and how it
-- ended; and the consultation's own recording (agent left, dispatcher
-- right). The call's recording covers the caller throughout.
CREATE TABLE transfers (
    id                 TEXT PRIMARY KEY,
    call_id            TEXT NOT NULL REFERENCES calls (id),
    incident_id        TEXT NOT NULL,
    -- The agent who had the caller.
    from_agent         TEXT,
    agency             TEXT NOT NULL,
    -- The dispatcher who answered, if one did.
    to_agent           TEXT,
    requested_by       TEXT NOT NULL,
    started_at         BIGINT NOT NULL,
    answered_at        BIGINT,
    ended_at           BIGINT,
    -- completed, conference_completed, cancelled, no_answer, caller_hung_up,
    -- dispatcher_hung_up, shutdown
    outcome            TEXT,
    recording_path     TEXT,
    recording_sha256   TEXT,
    recording_error    TEXT
);
CREATE INDEX transfers_call ON transfers (call_id, started_at);
