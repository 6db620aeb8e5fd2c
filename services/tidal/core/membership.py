"""Cluster membership as the coordinator sees it.

Member lifecycle: IDLE (registered, no job) -> ASSIGNED (has a job) -> IDLE when the job
ends; any state -> FAILED when its session breaks or its heartbeats stop for longer than
the timeout; any state -> LEFT when it says goodbye. Every change bumps the cluster epoch.
A live member whose session broke may come back under its id (`rejoin`); a FAILED or LEFT
one registers again as a new member, and is forgotten once no job needs it and a retention
period has passed (`forget_ended`), so membership does not grow with every member ever seen.

Membership records which members changed and which it forgot since the coordinator last
took them (`take_changes`): the state store writes only those.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum

from tidal.core.authz import bind_member_id
from tidal.core.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, ResourceExhaustedError


class Role(Enum):
    WORKER = "worker"
    SHARD = "shard"


class MemberState(Enum):
    IDLE = "idle"
    ASSIGNED = "assigned"
    FAILED = "failed"
    LEFT = "left"


LIVE_STATES = (MemberState.IDLE, MemberState.ASSIGNED)


@dataclass
class Member:
    member_id: str
    role: Role
    address: str
    name: str
    state: MemberState
    # Monotonic seconds of the last sign of life.
    last_seen: float
    job_id: str = ""
    # Shards: the index this shard always takes (--index); None: any.
    shard_index: int | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


class Membership:
    def __init__(self, max_members: int = 4096) -> None:
        self._members: dict[str, Member] = {}
        # The number in the next member id; saved, so ids are never reused after a restart.
        self.next_id = 0
        self._max_members = max_members
        self.epoch = 0
        # Since the last `take_changes`: ids whose saved fields changed, ids forgotten.
        self._changed: set[str] = set()
        self._forgotten: set[str] = set()
        # Ended members no job needs: monotonic seconds since when (see `forget_ended`).
        self._unneeded_since: dict[str, float] = {}

    def register(
        self, role: Role, address: str, name: str, now: float, identity: str = "", shard_index: int | None = None
    ) -> Member:
        """A new member; with an authenticated `identity` its id is bound to it (core/authz.py).
        A shard may ask for a fixed `shard_index`, which no other live shard holds."""
        if role is Role.SHARD and not address:
            raise InvalidArgumentError("address: a shard must give the host:port workers dial")
        if shard_index is not None:
            self._check_index(role, shard_index)
        if sum(m.live for m in self._members.values()) >= self._max_members:
            raise ResourceExhaustedError(f"members: the cluster already has {self._max_members} live members")
        member_id = bind_member_id(f"{role.value}-{self.next_id}-{secrets.token_hex(3)}", identity)
        self.next_id += 1
        member = Member(member_id, role, address, name or member_id, MemberState.IDLE, now, shard_index=shard_index)
        self._members[member_id] = member
        self._changed.add(member_id)
        self.epoch += 1
        return member

    def _check_index(self, role: Role, shard_index: int) -> None:
        if role is not Role.SHARD:
            raise InvalidArgumentError("shard_index: only a shard takes a shard index (--index)")
        for m in self._members.values():
            if m.live and m.role is Role.SHARD and m.shard_index == shard_index:
                raise AlreadyExistsError(
                    f"shard_index: shard index {shard_index} is taken by the live shard {m.member_id} ({m.name}, "
                    f"{m.address}); give each shard its own --index (TIDAL_SHARD_INDEX)"
                )

    def rejoin(self, member_id: str, role: Role, address: str, now: float) -> Member | None:
        """The member `member_id`, if it is still live with this role: its session broke (or
        the coordinator restarted) and it resumes under the same id. None otherwise."""
        member = self._members.get(member_id)
        if member is None or not member.live or member.role is not role:
            return None
        member.last_seen = now
        if address and address != member.address:
            member.address = address
            self._changed.add(member_id)
        return member

    def restore(self, members: list[Member], epoch: int, next_id: int = 0) -> None:
        """Adopts the members saved by an earlier coordinator; new ids continue after theirs
        and after `next_id` (the saved counter, which also covers forgotten members)."""
        for member in members:
            self._members[member.member_id] = member
        self.epoch = max(self.epoch, epoch)
        numbers = [int(n) for m in members if (n := m.member_id.partition("-")[2].partition("-")[0]).isdigit()]
        self.next_id = max(self.next_id, next_id, max(numbers, default=-1) + 1)

    def get(self, member_id: str) -> Member:
        try:
            return self._members[member_id]
        except KeyError:
            raise NotFoundError(f"member_id: no member {member_id!r}") from None

    def all(self) -> list[Member]:
        return list(self._members.values())

    def seen(self, member_id: str, now: float) -> None:
        self.get(member_id).last_seen = now

    def idle(self, role: Role) -> list[Member]:
        return [m for m in self._members.values() if m.role is role and m.state is MemberState.IDLE]

    def assign(self, member_id: str, job_id: str) -> None:
        member = self.get(member_id)
        member.state, member.job_id = MemberState.ASSIGNED, job_id
        self._changed.add(member_id)
        self.epoch += 1

    def release(self, member_id: str) -> None:
        member = self.get(member_id)
        if member.live:
            member.state, member.job_id = MemberState.IDLE, ""
            self._changed.add(member_id)
            self.epoch += 1

    def fail(self, member_id: str, state: MemberState = MemberState.FAILED) -> Member:
        member = self.get(member_id)
        member.state = state
        self._changed.add(member_id)
        self.epoch += 1
        return member

    def overdue(self, now: float, timeout_s: float) -> list[Member]:
        """Live members silent for longer than `timeout_s`."""
        return [m for m in self._members.values() if m.live and now - m.last_seen > timeout_s]

    def forget_ended(self, now: float, retention_s: float, needed: Collection[str]) -> list[str]:
        """Forgets members that failed or left and that no job needs (not in `needed`) for
        `retention_s` (monotonic `now`); returns their ids. Live members are never forgotten."""
        forgotten = []
        for member_id, member in list(self._members.items()):
            if member.live or member_id in needed:
                self._unneeded_since.pop(member_id, None)
                continue
            since = self._unneeded_since.setdefault(member_id, now)
            if now - since >= retention_s:
                del self._members[member_id], self._unneeded_since[member_id]
                self._changed.discard(member_id)
                self._forgotten.add(member_id)
                forgotten.append(member_id)
        return forgotten

    def take_changes(self) -> tuple[list[Member], list[str]]:
        """Members changed and ids forgotten since the last call, which starts afresh."""
        changed = [self._members[m] for m in sorted(self._changed)]
        forgotten = sorted(self._forgotten)
        self._changed, self._forgotten = set(), set()
        return changed, forgotten
