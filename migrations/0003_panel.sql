-- The panel (issue 4): users and their sessions, the incident form, and the
-- audit trail of every change to an incident. Portable SQL, like 0001.

CREATE TABLE users (
    id                 TEXT PRIMARY KEY,
    username           TEXT NOT NULL UNIQUE,
    display_name       TEXT NOT NULL,
    -- call_taker, dispatcher, supervisor or admin
    role               TEXT NOT NULL,
    -- The agency a dispatcher works for (ntpd, polri, damkar, psc119...).
    agency             TEXT,
    -- The SIP agent account whose calls this user takes, if any.
    agent_id           TEXT,
    -- Argon2id in PHC string form; never the password.
    password_hash      TEXT NOT NULL,
    disabled           BIGINT NOT NULL DEFAULT 0,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

-- Only a SHA-256 of the cookie's token is kept: a copy of the database
-- does not let anyone log in.
CREATE TABLE sessions (
    token_sha256       TEXT PRIMARY KEY,
    user_id            TEXT NOT NULL REFERENCES users (id),
    created_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

-- What the call-taker fills in. status: new, received, unit_sent,
-- on_scene, closed, or merged (into merged_into, another incident).
ALTER TABLE incidents ADD COLUMN category TEXT;
ALTER TABLE incidents ADD COLUMN priority BIGINT;
ALTER TABLE incidents ADD COLUMN address TEXT;
ALTER TABLE incidents ADD COLUMN notes TEXT;
ALTER TABLE incidents ADD COLUMN agency TEXT;
ALTER TABLE incidents ADD COLUMN merged_into TEXT;
ALTER TABLE incidents ADD COLUMN updated_at BIGINT;
CREATE INDEX incidents_agency ON incidents (agency, created_at);
CREATE INDEX incidents_status ON incidents (status, created_at);

-- Every change to an incident: who, when, what (one row per field).
CREATE TABLE incident_audit (
    incident_id        TEXT NOT NULL REFERENCES incidents (id),
    at                 BIGINT NOT NULL,
    -- The user's username, or "system" for what siaga did by itself.
    actor              TEXT NOT NULL,
    action             TEXT NOT NULL,
    field              TEXT,
    old_value          TEXT,
    new_value          TEXT
);
CREATE INDEX incident_audit_incident ON incident_audit (incident_id, at);

-- A call siaga placed to call an abandoned caller back: the call it
-- answers, and which supervisor asked for it.
ALTER TABLE calls ADD COLUMN direction TEXT NOT NULL DEFAULT 'inbound';
ALTER TABLE calls ADD COLUMN callback_of TEXT;
ALTER TABLE calls ADD COLUMN requested_by TEXT;
