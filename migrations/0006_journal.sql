-- How far the database holds each records journal (store::journal): the
-- number of the last journaled record written here, in the same
-- transaction as that record. A restart replays only what comes after.
CREATE TABLE journal_state (
    journal TEXT PRIMARY KEY,
    applied_seq BIGINT NOT NULL
);
