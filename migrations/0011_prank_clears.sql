-- A supervisor's word that a number is no longer a repeat prank caller:
-- only pranks after `cleared_at` (ms since the epoch) count for it.
-- `number` is normalised (0812..., see `pranks::normalise`).
CREATE TABLE prank_clears (
    number TEXT PRIMARY KEY,
    cleared_at BIGINT NOT NULL,
    cleared_by TEXT NOT NULL
);
