#!/bin/sh
# As the official image does: started with options but no config file, Redis would be in
# protected mode (loopback only, as no password is set); the compose network is the boundary.
set -eu
if [ "${1:-}" = "redis-server" ]; then
  shift
  case "${1:-}" in
    *.conf) exec redis-server "$@" ;;
    *) exec redis-server --protected-mode no "$@" ;;
  esac
fi
exec "$@"
