"""Live broadcast (docs/websocket.md): authenticated WebSocket fan-out of positions per event.

Imports `processor.codecs`, `processor.store`, `processor.observability` and `processor.config`,
never `processor.core` (checked by import-linter): the durable pipeline
and the live path share only the stream and the database.
"""
