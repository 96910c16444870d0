# Sourced by scripts/run and scripts/test: make .venv with the project installed, once per
# change of pyproject.toml, and put PostgreSQL's server binaries on PATH when they are installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
extras=${1:-}
stamp=".venv/.installed${extras:+-$extras}"
say() { echo "scripts/$(basename "$0"): $*" >&2; }
if [ ! -x .venv/bin/python ]; then
    say "creating the virtual environment .venv/ (first run)"
    "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing chatserver${extras:+ with its $extras extras} and its dependencies into .venv/" \
        "(a minute or so the first time; the log is .venv/install.log)"
    # pip's and setuptools' notices (the editable-install warning among them) go to the log,
    # which is shown only when the installation fails.
    if ! { .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip \
        && .venv/bin/python -m pip install --quiet --disable-pip-version-check \
            -e ".${extras:+[$extras]}"; } >.venv/install.log 2>&1; then
        cat .venv/install.log >&2
        say "installation failed (above; kept in .venv/install.log)"
        exit 1
    fi
    touch "$stamp"
    say "installed"
fi
for dir in /usr/lib/postgresql/*/bin; do
    [ -d "$dir" ] && PATH="$PATH:$dir"
done
export PATH
