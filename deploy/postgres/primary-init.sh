#!/bin/bash
# Run once by the postgres image when it creates the primary's cluster: a replication role for
# the streaming replica (its password from the replication_password secret) and the pg_hba line
# that lets it in from the compose network; and makes the replication synchronous.
set -euo pipefail
password=$(cat "${REPLICATION_PASSWORD_FILE:?}")
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set password="$password" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
-- In force from the next start (the image restarts the server after these scripts): every
-- commit then waits for the replica named replica1 (its cluster_name) to have it on disk.
ALTER SYSTEM SET synchronous_standby_names = 'replica1';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
