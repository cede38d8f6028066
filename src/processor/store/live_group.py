"""The live broadcaster's own consumer group: created by it, and never mistaken for another.

The broadcaster reads with `NOACK` and, on start, moves its group to `$` (`XGROUP SETID`) so a
crashed predecessor's group does not replay history to browsers; on a clean stop it destroys the
group. Done to the *durable* group (`LIVE_GROUP_PREFIX-INSTANCE_ID` equal to `REDIS_GROUP`, or a
group of another deployment), each of those loses records: NOACK reads never reach the pending
list, SETID skips everything not yet read, DESTROY drops the pending list. So the broadcaster
only ever resets or destroys a group it can tell is its own:

- it creates its group and registers its consumer in one step (a Lua script: `XGROUP CREATE`
  then `XGROUP CREATECONSUMER`), so a broadcaster's group always has exactly that consumer;
- an existing group is taken over (reset to `$`) only when its sole consumer is this
  broadcaster's name and nothing is pending in it (NOACK never leaves anything pending). Any
  other group is refused with `GroupInUse`: the instance does not start, nothing is touched.

Config refuses the plain collision (live group name = `REDIS_GROUP`) before anything starts.
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
