"""The push ids a shard remembers, per member, and what became of each: a push retried after a
reconnect or a restore is answered from here and never applied twice. The memory is bounded
per member, oldest first, so no member's ids, valid or not, can evict another member's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from tidal.core.push_outcomes import PushResult

# Push ids remembered per member for deduplication: a worker retries only its latest push (after
# a reconnect), so this is ample; per member, so one member's pushes cannot evict another's.
PUSH_IDS_PER_MEMBER = 1024


class PushMemory:
    def __init__(self) -> None:
        # member -> its latest push ids and what became of each, oldest first.
        self._by_member: dict[str, OrderedDict[str, PushResult]] = {}

    def get(self, member: str, push_id: str) -> PushResult | None:
        """What became of `member`'s push `push_id`, if it is remembered."""
        return self._by_member.get(member, {}).get(push_id)

    def remember(self, member: str, push_id: str, result: PushResult) -> None:
        remembered = self._by_member.setdefault(member, OrderedDict())
        remembered[push_id] = result
        if len(remembered) > PUSH_IDS_PER_MEMBER:
            remembered.popitem(last=False)

    def recent(self, per_member: int = PUSH_IDS_PER_MEMBER) -> list[tuple[str, str, PushResult]]:
        """The latest `per_member` remembered pushes of each member as (member, push id,
        result), each member's oldest first."""
        return [
            (member, push_id, result)
            for member, remembered in self._by_member.items()
            for push_id, result in list(remembered.items())[-per_member:]
        ]

    def restore(self, pushes: Iterable[tuple[str, str, PushResult]]) -> None:
        """Remembers `pushes` (as `recent` gave them), in order."""
        for member, push_id, result in pushes:
            self.remember(member, push_id, result)
