-- When the caller pressed 5 twice (a silent emergency: someone there who
-- cannot speak), ms since the epoch; NULL if they never did.
ALTER TABLE calls ADD COLUMN silent_at BIGINT;
