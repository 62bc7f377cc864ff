-- Run once by the postgres image when its volume is new (compose mounts it in /docker-entrypoint-initdb.d):
-- the two roles the booking service runs with (docs/architecture.md, "Least privilege"). The owner owns the database and
-- applies the migrations; the service's role gets only the grants the migrations give it. Compose trusts the
-- network it makes, so no passwords here; elsewhere give each role its own (ALTER ROLE ... PASSWORD).
CREATE ROLE booking_owner LOGIN;
CREATE ROLE booking_app LOGIN;
ALTER DATABASE booking OWNER TO booking_owner;
