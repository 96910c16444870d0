# Sourced by scripts/run and scripts/test: make .venv with the project installed, once per
# change of pyproject.toml, and put PostgreSQL's server binaries on PATH when they are installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
extras=${1:-}
stamp=".venv/.installed${extras:+-$extras}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
    touch "$stamp"
fi
for dir in /usr/lib/postgresql/*/bin; do
    [ -d "$dir" ] && PATH="$PATH:$dir"
done
export PATH
