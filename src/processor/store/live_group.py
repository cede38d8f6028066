"""The live broadcaster's own consumer group: created by it, and never mistaken for another.

The broadcaster reads with `NOACK`, resets its group to `$` on start and destroys it on a clean
stop; done to any other group, each of those loses records. So it creates its group and its
consumer in one step (a Lua script), takes an existing group over only when its sole consumer is
this broadcaster and nothing is pending, and refuses any other with `GroupInUse` (the instance
does not start, nothing is touched). Why: docs/pipeline.md, Internals.
"""

from __future__ import annotations

from typing import Any

import redis

CREATE_WITH_CONSUMER = """
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '$', 'MKSTREAM')
if type(created) == 'table' and created.err then
    if string.find(created.err, 'BUSYGROUP', 1, true) then
        return 0
    end
    return created
end
redis.call('XGROUP', 'CREATECONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class GroupInUse(Exception):
    """The live group's name belongs to a group this broadcaster did not create."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def take_live_group(client: redis.Redis, stream: str, group: str, consumer: str) -> str:
    """Create the live group at `$`, or take over this broadcaster's own leftover one.

    Returns "created" or "reset" (blocking; run in a thread). Raises GroupInUse for a group
    that is not a leftover of this broadcaster, without changing it.
    """
    if int(client.eval(CREATE_WITH_CONSUMER, 1, stream, group, consumer)):
        return "created"
    consumers: Any = client.xinfo_consumers(stream, group)
    names = sorted(_text(c["name"]) for c in consumers)
    pending = sum(int(c["pending"]) for c in consumers)
    if names != [consumer] or pending:
        raise GroupInUse(
            f"consumer group {group!r} on {stream!r} already exists and is not this instance's "
            f"live group (consumers {names or 'none'}, {pending} pending): set LIVE_GROUP_PREFIX "
            "or INSTANCE_ID so that the live group name is used by nothing else"
        )
    client.xgroup_setid(stream, group, "$")
    return "reset"
