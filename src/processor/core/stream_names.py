"""Where one consumer group's entries come from and where its dead letters go.

The durable pipeline and the racing domain each read the input stream through a group of their
own, and each dead-letters what it cannot take into the same dead-letter stream: one value
names all of it for the consumer, the reclaimer and the settling of a batch.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class StreamNames:
    stream: str
    group: str
    consumer: str
    dead_letter_stream: str
    dead_letter_maxlen: int
