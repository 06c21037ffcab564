-- Where each agent's phone can be reached (sip::registrar), kept where
-- every node sees it: a node that starts leading rings phones at once,
-- without waiting for them to register again. One row per binding; `path`
-- is the REGISTER's Path values joined by newlines ('' for none);
-- `expires_at` is on the wall clock (ms since the epoch).
CREATE TABLE registrations (
    agent TEXT NOT NULL,
    contact TEXT NOT NULL,
    source TEXT NOT NULL,
    transport TEXT NOT NULL,
    path TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (agent, contact)
);
