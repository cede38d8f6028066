# Every recipe installs from pdm.lock first, so a fresh clone needs nothing else.
set shell := ["bash", "-euo", "pipefail", "-c"]

export PDM_CHECK_UPDATE := "false"

# list the recipes
default:
    @just --list

# install the locked dependencies (all groups) into .venv
install:
    pdm sync -G :all --clean -q

# run the daemon against REDIS_URL / DATABASE_URL
run: install
    pdm run processor run

# apply database migrations
migrate: install
    pdm run processor migrate

# processor + simulator with a live status line (throwaway servers unless REDIS_URL/DATABASE_URL)
demo *ARGS: install
    pdm run processor demo {{ARGS}}

# the benchmark: raw COPY vs seed design vs processor, latency, RSS, drain -> bench-results.json
bench *ARGS: install
    pdm run python -m benchmarks.run {{ARGS}}

# the full test suite against real Redis and PostgreSQL
test *ARGS: install
    pdm run pytest {{ARGS}}

# ruff (select = ALL), mypy strict on src/ and benchmarks/, and the import contracts
lint: install
    pdm run ruff check src tests benchmarks
    pdm run ruff format --check src tests benchmarks
    pdm run mypy
    pdm run lint-imports

# Directus's settings come from the environment (DB_CLIENT=pg, DB_HOST, ...: deploy/directus/README.md)
# the Directus CLI of deploy/directus (11.3.5, installed once into ~/.cache/processor)
directus *ARGS:
    node "$(bash deploy/directus/install.sh)/node_modules/@directus/api/dist/cli/run.js" {{ARGS}}

# the image built and run by podman, the compose stack, the Quadlet check (root; after
# ../shared/podman/setup.sh; see OPERATIONS.md section 1)
container-test *ARGS: install
    pdm run pytest tests/container -p no:cacheprovider --timeout 900 {{ARGS}}
