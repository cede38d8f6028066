"""The durable pipeline: stream -> consumer -> channel -> writer -> database -> ack.

Nothing here imports `processor.live` (checked by import-linter).
"""
