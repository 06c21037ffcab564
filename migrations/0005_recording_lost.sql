-- Audio left out of a recording, in ms, because the recorder's queue was
-- at its bound (`media.recording_queue_mib`: the disk or the cores could
-- not keep up). Silence stands in for it in the file, so the file keeps
-- the call's timeline. NULL: nothing was left out.
ALTER TABLE calls ADD COLUMN recording_lost_ms BIGINT;
ALTER TABLE transfers ADD COLUMN recording_lost_ms BIGINT;
