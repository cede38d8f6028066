"""Access to Redis and PostgreSQL. Blocking drivers run in `trio.to_thread`, one hop per batch."""
