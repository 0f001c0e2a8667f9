-- Document jobs claimed by workers (actorbot worker, or a cluster's
-- leader): who runs a job and until when its claim holds unless renewed
-- (the database's clock, Unix milliseconds). A job whose claim has ended
-- is taken by the next worker with room, so a worker that dies mid-job
-- gives its job back. Claims are made in a cluster only (PostgreSQL).
ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
ALTER TABLE jobs ADD COLUMN lease_until BIGINT;
