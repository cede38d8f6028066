#!/usr/bin/env bash
# Installs the Directus of package-lock.json (11.3.5, the last line that runs on Node.js 20) into a
# cache directory outside the repository, once per lock file, and prints that directory. Used by
# `just directus` and by the real-Directus tests (tests/support/directus_real.py); concurrent runs
# wait for each other, and a half-finished install is never used.
#
# Node.js and npm come from the machine (Debian: apt-get install nodejs npm). Packages come from
# the npm registry by name and version, checked against the lock's integrity hashes. Install
# scripts are skipped except those of the three native modules Directus loads at start:
# isolated-vm is compiled here (node-gyp, with the machine's Node headers; it needs g++, make
# and python3), argon2 and sharp ship prebuilt binaries. That skips compiling sqlite3 and
# the download attempts of the other packages' scripts.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

for tool in node npm g++ make python3 flock; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "deploy/directus/install.sh: '$tool' is missing; install it with:" \
      "apt-get install -y nodejs npm g++ make python3 util-linux" >&2
    exit 127
  fi
done

key=$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)
root=${XDG_CACHE_HOME:-$HOME/.cache}/processor
target=$root/directus-$key
if [ ! -f "$target/.installed" ]; then
  mkdir -p "$root"
  exec 9>"$target.lock"
  flock 9
  if [ ! -f "$target/.installed" ]; then
    work=$(mktemp -d "$target.partial.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    cp "$here/package.json" "$here/package-lock.json" "$work/"
    # Node headers for node-gyp: the machine's own (no download), when they are installed.
    if [ -z "${npm_config_nodedir:-}" ] && [ -f /usr/include/node/node_version.h ]; then
      export npm_config_nodedir=/usr
    fi
    (
      cd "$work"
      npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2
      npm rebuild isolated-vm argon2 sharp --loglevel=error >&2
      node -e "require('isolated-vm'); require('argon2'); require('sharp')" >&2
    )
    touch "$work/.installed"
    rm -rf "$target"
    mv "$work" "$target"
    trap - EXIT
  fi
fi
echo "$target"
