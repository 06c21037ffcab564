-- Each agent's desk as the leader last set it: `ready`, `not_ready` (with
-- its reason) or `logged_out` (on a call or in wrap-up counts as ready).
-- A node that starts leading sets its agents so, and agents keep their
-- state across a take-over. `changed_at`: ms since the epoch.
CREATE TABLE agent_desks (
    agent TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    reason TEXT,
    changed_at BIGINT NOT NULL
);
