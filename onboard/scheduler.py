"""Scheduler under deadlines: priority classes, EDF within a class, bounded queues, dynamic batching.

Class 0 is the most urgent (anomaly alerts), the last background. Dispatch is strict priority
across classes, earliest-deadline-first within one. Each class has a bounded queue (cost units)
and all share a total bound, so memory stays bounded under any overload: a full class rejects
(backpressure); when only the total is full, class 0 makes room by shedding the least urgent
class's latest-deadline work (reason ``"overload"``); expired work is shed (``"deadline"``),
never run. At any moment, per class, ``offered == processed + shed + rejected + queued +
in_service``; every shed item goes through ``on_shed(item, reason)``. See docs/onboard.md.
"""
from __future__ import annotations

import enum
import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

from engines.errors import UserError

DEVICES = ("GPU", "DLA0", "DLA1", "CPU")


class Admission(str, enum.Enum):
    """What :meth:`Scheduler.submit` did with an item."""

    ACCEPTED = "accepted"
    REJECTED_FULL = "rejected_full"
    SHED_DEADLINE = "shed_deadline"      # deadline already passed: counted as shed


@dataclass(order=True)
class Job:
    """A queued item; ordered by (deadline, arrival) for EDF."""

    deadline: float
    seq: int
    item: Any = field(compare=False)
    priority: int = field(compare=False)
    cost: int = field(compare=False)
    engine_key: Hashable = field(compare=False)
    submitted: float = field(compare=False)


class Scheduler:
    """Priority classes with EDF inside each, bounded queues, shedding and dynamic batching.

    Parameters
    ----------
    capacities : sequence of int
        Queue bound of each class in cost units; its length is the number of classes.
    total_capacity : int, optional
        Bound over all classes together (default: the sum of ``capacities``, i.e. no extra bound).
    on_shed : callable, optional
        ``on_shed(item, reason)`` for every shed item; called without the scheduler's lock held.
    clock : callable, optional
        Time source for deadlines (``time.time``: deadlines are absolute wall-clock times, as in
        the wire protocol's ``deadline`` field).
    """

    def __init__(self, capacities: Sequence[int] = (64, 64, 64, 64), total_capacity: Optional[int] = None,
                 on_shed: Optional[Callable[[Any, str], None]] = None, clock: Callable[[], float] = time.time):
        if not capacities or any(int(c) < 1 for c in capacities):
            raise UserError(f"scheduler: capacities must be positive ints, one per class; got {list(capacities)}")
        self.capacities = [int(c) for c in capacities]
        self.total_capacity = int(total_capacity) if total_capacity else sum(self.capacities)
        self.on_shed, self.clock = on_shed, clock
        self._cv = threading.Condition()
        self._heaps: Dict[tuple, List[Job]] = {}          # (class, engine key) -> EDF heap
        self._used = [0] * len(self.capacities)            # queued cost per class
        self._seq = itertools.count()
        self._stats = [dict.fromkeys(("offered", "processed", "shed", "rejected", "queued", "in_service", "late"), 0)
                       for _ in self.capacities]
        self.shed_by_reason: Dict[str, int] = {}

    @property
    def n_classes(self) -> int:
        """Number of priority classes."""
        return len(self.capacities)

    def submit(self, item: Any, priority: int, deadline: float, cost: int = 1,
               engine_key: Hashable = "default") -> Admission:
        """Offer one item; return whether it was queued.

        Parameters
        ----------
        item : any
            What the worker gets back in a :class:`Job` from :meth:`next_batch`.
        priority : int
            Class, 0 (most urgent) to ``n_classes - 1``.
        deadline : float
            Absolute time (of ``clock``) after which the result is worthless.
        cost : int, optional
            Queue units the item takes (e.g. tiles in a frame).
        engine_key : hashable, optional
            Which engine runs it; a batch holds one key only.
        """
        if not 0 <= priority < self.n_classes:
            raise UserError(f"scheduler: priority {priority!r} is not a class in 0..{self.n_classes - 1}")
        shed: List[tuple] = []
        with self._cv:
            st = self._stats[priority]
            st["offered"] += 1
            now = self.clock()
            if deadline <= now:
                self._count_shed(priority, "deadline", shed, item)
                result = Admission.SHED_DEADLINE
            else:
                result = self._make_room(priority, cost, now, shed)
                if result is Admission.ACCEPTED:
                    job = Job(deadline, next(self._seq), item, priority, cost, engine_key, now)
                    heapq.heappush(self._heaps.setdefault((priority, engine_key), []), job)
                    self._used[priority] += cost
                    st["queued"] += 1
                    self._cv.notify_all()
                else:
                    st["rejected"] += 1
        self._report(shed)
        return result

    def _make_room(self, priority: int, cost: int, now: float, shed: List[tuple]) -> Admission:
        def fits() -> bool:
            return (self._used[priority] + cost <= self.capacities[priority]
                    and sum(self._used) + cost <= self.total_capacity)
        if not fits():
            self._shed_expired(now, shed)
        while not fits() and priority == 0 and self._used[priority] + cost <= self.capacities[0]:
            victim = self._least_urgent()
            if victim is None:
                break
            self._remove(victim)
            self._count_shed(victim.priority, "overload", shed, victim.item)
        return Admission.ACCEPTED if fits() else Admission.REJECTED_FULL

    def _least_urgent(self) -> Optional[Job]:
        """The queued job of the least urgent non-empty class (>0) with the latest deadline."""
        for cls in range(self.n_classes - 1, 0, -1):
            jobs = [j for (c, _), heap in self._heaps.items() if c == cls for j in heap]
            if jobs:
                return max(jobs, key=lambda j: (j.deadline, j.seq))
        return None

    def _remove(self, job: Job) -> None:
        """Take a job out of the middle of its heap: O(capacity), fine for bounded queues."""
        heap = self._heaps[(job.priority, job.engine_key)]
        heap.pop(next(i for i, j in enumerate(heap) if j is job))
        heapq.heapify(heap)
        self._unqueue(job)

    def _unqueue(self, job: Job) -> None:
        self._used[job.priority] -= job.cost
        self._stats[job.priority]["queued"] -= 1
        self._cv.notify_all()                  # wakes producers waiting in wait_room

    def wait_room(self, priority: int, cost: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s until an item of ``cost`` fits in class ``priority`` without shedding.

        Class 0 needs room in its own queue only; other classes also within ``total_capacity``.
        Returns whether it fits now (the caller then submits; another producer may still win the race).
        """
        def fits() -> bool:
            if self._used[priority] + cost > self.capacities[priority]:
                return False
            return priority == 0 or sum(self._used) + cost <= self.total_capacity
        with self._cv:
            return self._cv.wait_for(fits, timeout)

    def _shed_expired(self, now: float, shed: List[tuple]) -> None:
        for key, heap in self._heaps.items():
            expired = [j for j in heap if j.deadline <= now]
            if expired:
                self._heaps[key] = [j for j in heap if j.deadline > now]
                heapq.heapify(self._heaps[key])
                for job in expired:
                    self._unqueue(job)
                    self._count_shed(job.priority, "deadline", shed, job.item)

    def _count_shed(self, priority: int, reason: str, shed: List[tuple], item: Any) -> None:
        self._stats[priority]["shed"] += 1
        self.shed_by_reason[reason] = self.shed_by_reason.get(reason, 0) + 1
        shed.append((item, reason))

    def _report(self, shed: List[tuple]) -> None:
        for item, reason in shed if self.on_shed is not None else ():
            self.on_shed(item, reason)

    def next_batch(self, engine_key: Optional[Hashable] = None, max_batch: int = 1, max_wait_s: float = 0.0,
                   defer_from: Optional[int] = None) -> List[Job]:
        """Take up to ``max_batch`` jobs of one engine key, most urgent first.

        Waits up to ``max_wait_s`` for the batch to fill; returns what it has then (possibly
        nothing). ``engine_key=None`` takes the key of the most urgent queued job. Classes
        numbered ``defer_from`` or higher stay queued (the power policy's
        ``defer_priorities_at_or_below``). Jobs past their deadline are shed, never returned.
        Call :meth:`done` with the jobs when finished.
        """
        n = self.n_classes if defer_from is None else max(0, min(self.n_classes, defer_from))
        give_up = time.monotonic() + max_wait_s
        batch: List[Job] = []
        shed: List[tuple] = []
        with self._cv:
            while True:
                key = engine_key if engine_key is not None or batch else self._most_urgent_key(n)
                if key is not None:
                    self._pop_into(batch, key, max_batch, shed, n)
                left = give_up - time.monotonic()
                if len(batch) >= max_batch or left <= 0:
                    break
                engine_key = key
                self._cv.wait(min(left, 1.0))
        self._report(shed)
        return batch

    def _most_urgent_key(self, n: int) -> Optional[Hashable]:
        for cls in range(n):
            tops = [h[0] for (c, _), h in self._heaps.items() if c == cls and h]
            if tops:
                return min(tops).engine_key
        return None

    def _pop_into(self, batch: List[Job], key: Hashable, max_batch: int, shed: List[tuple], n: int) -> None:
        now = self.clock()
        for cls in range(n):
            heap = self._heaps.get((cls, key))
            while heap and len(batch) < max_batch:
                job = heapq.heappop(heap)
                self._unqueue(job)
                if job.deadline <= now:
                    self._count_shed(cls, "deadline", shed, job.item)
                else:
                    self._stats[cls]["in_service"] += 1
                    batch.append(job)

    def done(self, jobs: Sequence[Job], error: Optional[str] = None) -> None:
        """Finish jobs from :meth:`next_batch`: processed (late if past deadline) or, with ``error``, shed."""
        shed: List[tuple] = []
        with self._cv:
            now = self.clock()
            for job in jobs:
                st = self._stats[job.priority]
                st["in_service"] -= 1
                if error is not None:
                    self._count_shed(job.priority, error, shed, job.item)
                else:
                    st["processed"] += 1
                    st["late"] += job.deadline < now
        self._report(shed)

    def depth(self, priority: Optional[int] = None) -> int:
        """Queued jobs in one class, or in all."""
        with self._cv:
            return sum(s["queued"] for i, s in enumerate(self._stats) if priority in (None, i))

    def stats(self) -> Dict[str, Any]:
        """Per-class offered/processed/shed/rejected/queued/in_service/late, queue use, shed reasons."""
        with self._cv:
            classes = [dict(s, used=u, capacity=c) for s, u, c in zip(self._stats, self._used, self.capacities)]
            return {"classes": classes, "total_used": sum(self._used), "total_capacity": self.total_capacity,
                    "shed_by_reason": dict(self.shed_by_reason)}


def allowed_devices(precision: str, plans: Iterable[Any] = (), has_gpu: bool = True,
                    dla_cores: int = 0) -> Tuple[str, ...]:
    """Devices a variant may run on: the GPU if present; ``DLA<k>`` for int8, for each core with a
    plan in ``plans`` (:class:`engines.plan.PlanEntry`-like, ``dla_core``) or, with no plans, each of
    ``dla_cores``; the CPU always (ONNX Runtime on the bundle's portable ONNX)."""
    out = ["GPU"] if has_gpu else []
    if precision == "int8":
        cores = sorted({p.dla_core for p in plans if getattr(p, "dla_core", None) is not None}) if plans \
            else list(range(dla_cores))
        out += ["DLA%d" % k for k in cores]
    return tuple(out + ["CPU"])


class DeviceAssigner:
    """Maps engine variants to devices: the allowed device with the least ``load / speed``.

    ``devices`` are those present, in order of preference for ties; ``speed`` gives each one's
    relative throughput (1 by default).
    """

    def __init__(self, devices: Sequence[str] = DEVICES, speed: Optional[Dict[str, float]] = None):
        self.devices = tuple(devices)
        self.speed = {d: float((speed or {}).get(d, 1.0)) for d in self.devices}
        self._load = dict.fromkeys(self.devices, 0.0)
        self._allowed: Dict[str, Tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def register(self, variant: str, allowed: Iterable[str]) -> Tuple[str, ...]:
        """Declare where ``variant`` may run; devices not present are ignored."""
        allowed = set(allowed)
        usable = tuple(d for d in self.devices if d in allowed)
        if not usable:
            raise UserError(f"variant {variant!r}: none of its devices {sorted(allowed)} is present "
                            f"(present: {list(self.devices)}); build a plan for one of them or allow the CPU")
        self._allowed[variant] = usable
        return usable

    def assign(self, variant: str, cost: float = 1.0) -> str:
        """Pick the device for ``cost`` units of ``variant`` work and add them to its load."""
        if variant not in self._allowed:
            raise UserError(f"variant {variant!r} is not registered; known: {sorted(self._allowed)}")
        with self._lock:
            best = min(self._allowed[variant], key=lambda d: ((self._load[d] + cost) / self.speed[d],
                                                               self.devices.index(d)))
            self._load[best] += cost
            return best

    def release(self, device: str, cost: float = 1.0) -> None:
        """Remove finished work from a device's load."""
        with self._lock:
            self._load[device] = max(0.0, self._load[device] - cost)

    def load(self) -> Dict[str, float]:
        """Current load per device."""
        with self._lock:
            return dict(self._load)
