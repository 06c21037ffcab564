-- Calls and incidents. Portable SQL: runs on SQLite and PostgreSQL alike.
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE incidents (
    id                 TEXT PRIMARY KEY,
    status             TEXT NOT NULL,
    service            TEXT NOT NULL,
    caller_number      TEXT,
    location_text      TEXT,
    latitude           DOUBLE PRECISION,
    longitude          DOUBLE PRECISION,
    geolocation        TEXT,
    prior_incidents    BIGINT NOT NULL DEFAULT 0,
    recent_incidents   BIGINT NOT NULL DEFAULT 0,
    created_at         BIGINT NOT NULL
);
CREATE INDEX incidents_caller ON incidents (caller_number, created_at);
CREATE INDEX incidents_created ON incidents (created_at);

CREATE TABLE calls (
    id                 TEXT PRIMARY KEY,
    incident_id        TEXT NOT NULL REFERENCES incidents (id),
    sip_call_id        TEXT NOT NULL,
    from_uri           TEXT NOT NULL,
    to_uri             TEXT NOT NULL,
    caller_number      TEXT,
    dialed             TEXT NOT NULL,
    service            TEXT NOT NULL,
    route              TEXT NOT NULL,
    queue              TEXT NOT NULL,
    source             TEXT NOT NULL,
    transport          TEXT NOT NULL,
    trunk              TEXT,
    status             TEXT NOT NULL,
    arrived_at         BIGINT NOT NULL,
    answered_at        BIGINT,
    ended_at           BIGINT,
    wait_ms            BIGINT,
    end_cause          TEXT,
    codec              TEXT,
    recording_path     TEXT,
    recording_sha256   TEXT,
    recording_error    TEXT
);
CREATE INDEX calls_arrived ON calls (arrived_at);
CREATE INDEX calls_incident ON calls (incident_id);

-- What happened during a call, in order (answer, overflow, end...).
CREATE TABLE call_events (
    call_id            TEXT NOT NULL REFERENCES calls (id),
    at                 BIGINT NOT NULL,
    kind               TEXT NOT NULL,
    detail             TEXT
);
CREATE INDEX call_events_call ON call_events (call_id, at);
