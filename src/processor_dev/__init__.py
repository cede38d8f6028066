"""Development tooling for the processor: never imported by the daemon.

Throwaway Redis/PostgreSQL servers (`devservers`), the telemetry simulator (`simulate`,
`publisher`, `rally_stage`), the one-command demo (`demo`) and its race-control page with a
Directus stand-in (`demo_page`). It sits beside the runtime package `processor`, not inside it,
so that what `processor run` imports is the daemon and nothing else; an import-linter contract
(pyproject.toml) forbids every runtime layer from importing this package. The CLI reaches the
`simulate` and `demo` commands through it lazily (`processor.cli.EXTRA_COMMANDS`).
"""
