#!/usr/bin/env bash
# Proves the Containerfile's build steps where no container engine runs (CI, this machine):
#
#   1. build the wheel from the tree (`pdm build --no-sdist`, as the Containerfile does),
#   2. install the locked runtime dependencies (`pdm export --prod`, hashes required) and the
#      wheel (no dependency resolution) into a fresh virtual environment,
#   3. run `processor --help`, and `processor migrate` twice (the second applies nothing)
#      against $DATABASE_URL, from outside the source tree, so the migrations must come from
#      inside the wheel.
#
# The migration runs in a scratch schema (dropped afterwards), so the target database is left
# as it was. Usage: DATABASE_URL=postgresql://... ops/check-image-steps.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
: "${DATABASE_URL:?set DATABASE_URL to a PostgreSQL the check may create a scratch schema in}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "build the wheel"
(cd "$root" && PDM_CHECK_UPDATE=false pdm build --no-sdist --dest "$work/dist" -q)
wheel="$(ls "$work"/dist/processor-*.whl)"
echo "$wheel"

step "export the locked runtime dependencies"
(cd "$root" && PDM_CHECK_UPDATE=false pdm export --prod -f requirements -o "$work/requirements.txt" -q)
grep -c '==' "$work/requirements.txt" | sed 's/$/ pinned packages/'

step "fresh virtual environment: locked dependencies, then the wheel"
"$python" -m venv "$work/venv"
venv="$work/venv/bin"
"$venv/pip" install -q --disable-pip-version-check --no-cache-dir --require-hashes \
    -r "$work/requirements.txt"
"$venv/pip" install -q --disable-pip-version-check --no-cache-dir --no-deps "$wheel"
"$venv/pip" check

step "processor --help"
cd "$work"  # outside the source tree: nothing may be found beside src/
"$venv/processor" --help

step "processor migrate (scratch schema)"
schema="image_check_$$_$RANDOM"
sql() { "$venv/python" -c 'import sys, psycopg; psycopg.connect(sys.argv[1], autocommit=True).execute(sys.argv[2])' "$DATABASE_URL" "$1"; }
sql "CREATE SCHEMA $schema"
trap 'sql "DROP SCHEMA IF EXISTS $schema CASCADE" || true; rm -rf "$work"' EXIT
scratch_url="$("$venv/python" - "$DATABASE_URL" "$schema" <<'PY'
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

url, schema = sys.argv[1], sys.argv[2]
parts = urlsplit(url)
query = dict(parse_qsl(parts.query))
query["options"] = f"-csearch_path={schema}"
print(urlunsplit(parts._replace(query=urlencode(query))))
PY
)"
export LOG_FORMAT=json LOG_LEVEL=info
DATABASE_URL="$scratch_url" "$venv/processor" migrate 2> "$work/first.log"
cat "$work/first.log"
grep -q '"0001_positions"' "$work/first.log" || { echo "migration 0001 was not applied"; exit 1; }
DATABASE_URL="$scratch_url" "$venv/processor" migrate 2> "$work/second.log"
grep -q '"applied": \[\]' "$work/second.log" || { cat "$work/second.log"; echo "second migrate applied something"; exit 1; }
"$venv/python" -c 'import sys, psycopg; psycopg.connect(sys.argv[1]).execute("SELECT count(*) FROM positions").fetchone()' "$scratch_url"

step "image steps OK"
