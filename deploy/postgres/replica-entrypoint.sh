#!/bin/bash
# The streaming replica: on first start, copy the primary with pg_basebackup -R (which writes
# standby.signal and primary_conninfo), naming itself replica1, the name the primary's
# synchronous_standby_names waits for; then run PostgreSQL as a hot standby.
set -euo pipefail
: "${PGDATA:?}" "${PRIMARY_HOST:?}" "${REPLICATION_PASSWORD_FILE:?}"
export PGPASSWORD
PGPASSWORD=$(cat "$REPLICATION_PASSWORD_FILE")
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    until pg_isready -h "$PRIMARY_HOST" -p 5432; do sleep 1; done
    pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U replicator -D "$PGDATA" \
        -X stream -R --checkpoint=fast \
        -d "application_name=replica1"
    # pg_basebackup -R writes the password into primary_conninfo; keep it, the data directory
    # is readable by postgres only.
fi
unset PGPASSWORD
exec postgres -c hot_standby=on -c cluster_name=replica1 -c max_connections=300
