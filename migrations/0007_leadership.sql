-- Leadership among the nodes sharing one PostgreSQL (store::lease): one
-- row, the node holding the lease and the process of it that holds it (two
-- processes given the same node name never both hold it), its term
-- (raised at every change of holder: a fencing token), the node it took
-- the lease from, and when the lease runs out on the database's clock (ms
-- since the epoch).
CREATE TABLE leadership (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    process TEXT NOT NULL,
    term BIGINT NOT NULL,
    previous TEXT,
    expires_at BIGINT NOT NULL
);

-- The node that took each call: a node closes only its own calls at its
-- start, or those of the node whose lease it took over. NULL: a call of a
-- single node before leadership existed.
ALTER TABLE calls ADD COLUMN node TEXT;
