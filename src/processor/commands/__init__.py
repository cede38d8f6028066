"""The operator's commands besides `processor run`: `config`, `dlq`, `timing` (registered by
`processor.cli`, imported only when chosen, so `--help` and a configuration error stay instant)."""
