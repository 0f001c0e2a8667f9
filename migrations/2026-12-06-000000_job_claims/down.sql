ALTER TABLE jobs DROP COLUMN lease_until;
ALTER TABLE jobs DROP COLUMN claimed_by;
