"""Scheduler partitions: which replica schedules which runs.

Runs are split into a fixed number of partitions (TRELLIS_SCHEDULER_PARTITIONS) by a stable hash
of their tenant and environment, so every run of one environment lands in one partition and the
environment's lock (one active run at a time, later ones queued in order) stays in one scheduler.
Each partition has its own lease, durable consumer and snapshot keys; every replica leads the
partitions a balanced assignment over the live replicas gives it and stands by for the others.

With one partition the names are those of the single scheduler before partitions (lease and
durable `scheduler`, snapshots `run.<tenant>.<run>`), so such an installation keeps its state.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass


def partition_of(tenant: str, environment: str, count: int) -> int:
    """The partition of an environment's runs: the same in every process and release."""
    if count == 1:
        return 0
    return _hash(f"{tenant}/{environment}") % count


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


_PARTITION_SUFFIX = re.compile(r"(?:^|-)p\d+of\d+$")


def scope_tenant_error(tenant: str) -> str:
    """Why a replica may not be narrowed to `tenant`, or "": its lease and durable names would be
    another scope's partition names (tenant `acme-p0of2`'s are `scheduler-acme-p0of2`, partition 0
    of 2 of tenant `acme`; tenant `p0of2`'s those of partition 0 of 2 of every tenant)."""
    if tenant != "*" and _PARTITION_SUFFIX.search(tenant):
        return (
            f"a scheduler cannot be narrowed to tenant {tenant!r}: a name ending in p<i>of<n> would "
            "share its lease and consumer with another scheduler's partition; schedule it with the "
            "scheduler of every tenant"
        )
    return ""


@dataclass(frozen=True, slots=True)
class Partition:
    index: int
    count: int
    tenant: str = "*"  # one tenant's runs only (tests and dedicated replicas), or every tenant's

    @property
    def scope(self) -> str:
        """What the replicas scheduling the same runs share: `scheduler` or `scheduler-<tenant>`."""
        return "scheduler" if self.tenant == "*" else f"scheduler-{self.tenant}"

    @property
    def name(self) -> str:
        """The lease key and durable consumer name: the scope, and with several partitions
        `<scope>-p<index>of<count>`."""
        return self.scope if self.count == 1 else f"{self.scope}-p{self.index}of{self.count}"

    @property
    def snapshot_prefix(self) -> str:
        """Snapshot keys are `<prefix>.<tenant>.<run>`."""
        return "run" if self.count == 1 else f"run-p{self.index}of{self.count}"

    @property
    def route(self) -> str:
        """The token after the subjects of the events agents send this partition (WorkItem.route)."""
        return "" if self.count == 1 else f"p{self.index}of{self.count}"

    def other_layout(self, name: str) -> bool:
        """Whether `name` is a lease or durable of this scope under another partition count."""
        found = re.fullmatch(rf"{re.escape(self.scope)}(?:-p\d+of(\d+))?", name)
        return found is not None and int(found.group(1) or 1) != self.count

    def owns(self, tenant: str, environment: str) -> bool:
        return partition_of(tenant, environment, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def assignment(members: Iterable[str], count: int) -> dict[str, set[int]]:
    """Which partitions each live replica should lead: every replica at most ceil(count/members),
    each partition to the replica ranked highest for it (rendezvous hashing) that still has room.
    Every replica computes the same answer from the same members, and a replica joining or
    leaving moves few partitions besides its own."""
    ordered = sorted(set(members))
    if not ordered:
        return {}
    room = math.ceil(count / len(ordered))
    out: dict[str, set[int]] = {m: set() for m in ordered}
    for index in range(count):
        ranked = sorted(ordered, key=lambda m: (_hash(f"{m}/{index}"), m), reverse=True)
        owner = next(m for m in ranked if len(out[m]) < room)
        out[owner].add(index)
    return out
