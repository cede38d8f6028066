# Every recipe installs from pdm.lock first, so a fresh clone needs nothing else.
set shell := ["bash", "-euo", "pipefail", "-c"]

export PDM_CHECK_UPDATE := "false"

# list the recipes
default:
    @just --list

# install the locked dependencies (all groups) into .venv
install:
    pdm sync -G :all --clean -q

# regenerate docs/configuration.md and the metrics table of docs/metrics.md from the code
docs: install
    pdm run python -m processor_dev.reference_docs

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

# the full test suite against real Redis and PostgreSQL (servers: README, Testing)
test *ARGS: install test-tools
    pdm run pytest {{ARGS}}

# the tests that need no server (tests/README.md), in seconds
test-unit *ARGS: install
    pdm run pytest tests/unit {{ARGS}}

# install what the suite needs from Debian when missing (root), or name the command
test-tools:
    #!/usr/bin/env bash
    # chromium: the race-control page test; promtool (package prometheus): the metrics
    # exposition, the alert rules and the scrape configuration; Node.js, npm, g++ and make:
    # the real Directus of the Directus tests (npm installs it, compiling one native module).
    # Only root can apt-get: anyone else is told the command and stopped, rather than a few
    # tests failing later.
    set -euo pipefail
    missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    command -v make >/dev/null 2>&1 || missing+=(make)
    # Debian's nodejs links its libraries dynamically, so node-gyp links a native module
    # against them too (-lz -lbrotlienc -lcares -lnghttp2 -licuuc ...): with it, their -dev
    # packages. A node already on PATH is left as it is.
    if [[ " ${missing[*]} " == *" nodejs "* ]]; then
        missing+=(libnode-dev zlib1g-dev libbrotli-dev libc-ares-dev libnghttp2-dev libicu-dev)
    fi
    [ "${#missing[@]}" -eq 0 ] && exit 0
    install="apt-get install -y --no-install-recommends ${missing[*]}"
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "the test suite needs ${missing[*]} (Debian): run as root \`apt-get update && $install\`" >&2
        exit 1
    fi
    echo "installing ${missing[*]} for the test suite: $install" >&2
    apt-get update -qq
    # RUNLEVEL=1: install the files only, start no service (prometheus's would take port 9090)
    RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive $install -qq >/dev/null

# `just test` on a new user's machine: HEAD in a clean bookworm container (root, podman)
fresh-machine-test *ARGS:
    #!/usr/bin/env bash
    # A fresh clone of HEAD (committed work only) in a container of the base image that
    # ../shared/podman/setup.sh builds (Debian bookworm, Python 3.11, pip: what the README
    # asks for), running exactly the README's two commands. Root, podman.
    set -euo pipefail
    image="${PYTHON_IMAGE:-localhost/python:3.11-slim-bookworm}"
    podman image exists "$image" || { echo "no image $image: run ../shared/podman/setup.sh as root (it prints the name; PYTHON_IMAGE=that)" >&2; exit 1; }
    src=$(mktemp -d)
    trap 'rm -rf "$src"' EXIT
    git clone -q --no-checkout "$PWD" "$src"
    git -C "$src" checkout -q "$(git rev-parse HEAD)"
    echo "fresh-machine-test: $(git rev-parse --short HEAD) in $image" >&2
    # nothing of this machine's environment goes in (no REDIS_URL/DATABASE_URL): the suite
    # finds or starts its own servers as on a new user's machine
    podman run --rm --network host -v "$src:/src" -w /src "$image" \
        bash -euo pipefail -c "pip install -q --root-user-action=ignore 'pdm[locked]' rust-just && just test {{ARGS}}"

# ruff (select = ALL), mypy strict, the import contracts, actionlint on the Gitea workflow
lint: install
    pdm run ruff check src tests benchmarks
    pdm run ruff format --check src tests benchmarks
    pdm run mypy
    pdm run lint-imports
    pdm run actionlint .gitea/workflows/*.yml

# Directus's settings come from the environment (DB_CLIENT=pg, DB_HOST, ...: deploy/directus/README.md)
# the Directus CLI of deploy/directus (11.3.5, installed once into ~/.cache/processor)
directus *ARGS:
    node "$(bash deploy/directus/install.sh)/node_modules/@directus/api/dist/cli/run.js" {{ARGS}}

# the image run by podman, compose, Quadlet (root, after ../shared/podman/setup.sh)
container-test *ARGS: install
    pdm run pytest tests/container -p no:cacheprovider --timeout 900 {{ARGS}}
