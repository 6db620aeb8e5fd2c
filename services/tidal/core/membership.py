"""Cluster membership as the coordinator sees it.

Member lifecycle: IDLE (registered, no job) -> ASSIGNED (has a job) -> IDLE when the job
ends; any state -> FAILED when its session breaks or its heartbeats stop for longer than
the timeout; any state -> LEFT when it says goodbye. Every change bumps the cluster epoch.
A live member whose session broke may come back under its id (`rejoin`); a FAILED or LEFT
one registers again as a new member.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from enum import Enum

from tidal.core.authz import bind_member_id
from tidal.core.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError


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

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


class Membership:
    def __init__(self, max_members: int = 4096) -> None:
        self._members: dict[str, Member] = {}
        self._ids = itertools.count()
        self._max_members = max_members
        self.epoch = 0

    def register(self, role: Role, address: str, name: str, now: float, identity: str = "") -> Member:
        """A new member; with an authenticated `identity` its id is bound to it (core/authz.py)."""
        if role is Role.SHARD and not address:
            raise InvalidArgumentError("address: a shard must give the host:port workers dial")
        if sum(m.live for m in self._members.values()) >= self._max_members:
            raise ResourceExhaustedError(f"members: the cluster already has {self._max_members} live members")
        member_id = bind_member_id(f"{role.value}-{next(self._ids)}-{secrets.token_hex(3)}", identity)
        member = Member(member_id, role, address, name or member_id, MemberState.IDLE, now)
        self._members[member_id] = member
        self.epoch += 1
        return member

    def rejoin(self, member_id: str, role: Role, address: str, now: float) -> Member | None:
        """The member `member_id`, if it is still live with this role: its session broke (or
        the coordinator restarted) and it resumes under the same id. None otherwise."""
        member = self._members.get(member_id)
        if member is None or not member.live or member.role is not role:
            return None
        member.last_seen = now
        member.address = address or member.address
        return member

    def restore(self, members: list[Member], epoch: int) -> None:
        """Adopts the members saved by an earlier coordinator; new ids continue after theirs."""
        for member in members:
            self._members[member.member_id] = member
        self.epoch = max(self.epoch, epoch)
        numbers = [int(n) for m in members if (n := m.member_id.partition("-")[2].partition("-")[0]).isdigit()]
        self._ids = itertools.count(max(numbers, default=-1) + 1)

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
        self.epoch += 1

    def release(self, member_id: str) -> None:
        member = self.get(member_id)
        if member.live:
            member.state, member.job_id = MemberState.IDLE, ""
            self.epoch += 1

    def fail(self, member_id: str, state: MemberState = MemberState.FAILED) -> Member:
        member = self.get(member_id)
        member.state = state
        self.epoch += 1
        return member

    def overdue(self, now: float, timeout_s: float) -> list[Member]:
        """Live members silent for longer than `timeout_s`."""
        return [m for m in self._members.values() if m.live and now - m.last_seen > timeout_s]
