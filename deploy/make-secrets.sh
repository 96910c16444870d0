#!/bin/sh
# Write the secret files deploy/compose.yaml reads (deploy/secrets/, mode 600, never committed):
# database passwords and the URLs that carry them, the pool secret, the management token
# Prometheus scrapes with, Grafana's administrator password, and, unless they are there already,
# a self-signed TLS certificate and key for the nodes (replace them with your own:
# tls_certificate.pem and tls_key.pem, the certificate naming CHAT_PUBLIC_HOST).
# Existing files are kept: run it again after deleting one to make that one anew.
set -eu
cd "$(dirname "$0")"
mkdir -p -m 700 secrets
umask 077
host=${CHAT_PUBLIC_HOST:-localhost}
new() { [ -s "secrets/$1" ] || { printf '%s' "$2" > "secrets/$1"; echo "wrote secrets/$1"; }; }
token() { python3 -c 'import secrets; print(secrets.token_urlsafe(32), end="")'; }
new db_password "$(token)"
new replication_password "$(token)"
new compliance_db_password "$(token)"
new pool_secret "$(token)"
new management_token "$(token)"
new grafana_admin_password "$(token)"
new database_url "postgresql://chat:$(cat secrets/db_password)@/chat?host=db-primary:5432&host=db-replica:5432"
new compliance_database_url "postgresql://compliance:$(cat secrets/compliance_db_password)@compliance-db:5432/compliance"
if [ ! -s secrets/tls_certificate.pem ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$host" \
        -addext "subjectAltName=DNS:$host" \
        -keyout secrets/tls_key.pem -out secrets/tls_certificate.pem 2>/dev/null
    echo "wrote secrets/tls_certificate.pem and secrets/tls_key.pem (self-signed, CN=$host)"
fi
# The containers run as uid 10001 (the image's chat user) and read these bind-mounted files.
chmod 644 secrets/*
echo "the secrets are in $(pwd)/secrets; keep them out of version control"
