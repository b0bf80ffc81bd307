"""Task schedulers: which idle processor runs which queued task.

* :class:`FCFS`: an idle processor of any kind takes the oldest queued task.
* :class:`Static`: each task is bound to a processor kind when it is queued, by fixed
  weights (smooth weighted round robin: weights ``{"cpu": 1, "gpu": 3}`` bind 1 task in 4 to
  the CPU), whoever is idle.
* :class:`HLS`: SABER's heterogeneous look-ahead scheduler. Per query and processor kind it
  keeps the measured throughput ``policy[kind][query]`` in tasks/s (workers of the kind
  over their mean task time), refreshed every ``refresh`` seconds (default 1). The preferred
  kind of a query is the faster one; it takes the oldest task of the query. A processor of
  another kind walks the queue and takes a task when the preferred kind has taken
  ``switch_threshold`` tasks of the query in a row (so every kind keeps its estimate
  fresh), or when the tasks it skipped would keep the preferred kind busy longer than the
  task takes itself (the sum of ``1 / policy[preferred][q]`` over skipped tasks exceeds
  ``1 / policy[own][q]``). It takes nothing otherwise and waits.

Workers call :meth:`Scheduler.take` (blocking) and :meth:`Scheduler.done`; the engine calls
:meth:`Scheduler.submit` and :meth:`Scheduler.close`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Mapping

from .errors import StreamError
from .fragments import Task


class Scheduler:
    name = "base"

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._closed = False
        self.kinds: dict[str, int] = {}
        self.taken: Counter[str] = Counter()  # tasks taken per kind

    def attach(self, kinds: Mapping[str, int]) -> None:
        """The processor kinds and how many workers each has."""
        self.kinds = dict(kinds)

    def submit(self, task: Task) -> None:
        with self._cv:
            self._queue(task)
            self._cv.notify_all()

    def take(self, kind: str) -> Task | None:
        """The next task for an idle processor of ``kind``; ``None`` once closed and empty."""
        with self._cv:
            while True:
                task = self._pick(kind)
                if task is not None:
                    self.taken[kind] += 1
                    return task
                if self._closed and self._empty(kind):
                    return None
                self._cv.wait(0.05)

    def done(self, kind: str, task: Task, seconds: float) -> bool:
        """A processor of ``kind`` finished ``task`` in ``seconds``; whether it is now
        :meth:`starving` (answered under the same lock: this runs once per task)."""
        with self._cv:
            self._record(kind, task, seconds)
            self._cv.notify_all()
            return self._empty(kind)

    def starving(self, kind: str) -> bool:
        """Nothing queued that a processor of ``kind`` could take next."""
        with self._cv:
            return self._empty(kind)

    def close(self) -> None:
        """No more tasks: workers finish what is queued, then stop."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def cancel(self) -> None:
        """Drop what is queued and stop the workers."""
        with self._cv:
            self._clear()
            self._closed = True
            self._cv.notify_all()

    # Subclasses: called with the lock held.
    def _queue(self, task: Task) -> None:
        raise NotImplementedError

    def _pick(self, kind: str) -> Task | None:
        raise NotImplementedError

    def _empty(self, kind: str) -> bool:
        """Nothing queued that a processor of ``kind`` could take."""
        raise NotImplementedError

    def _record(self, kind: str, task: Task, seconds: float) -> None:
        pass

    def _clear(self) -> None:
        for q in self.__dict__.values():
            if isinstance(q, deque):
                q.clear()
            elif isinstance(q, dict):
                for v in q.values():
                    if isinstance(v, deque):
                        v.clear()


class FCFS(Scheduler):
    name = "fcfs"

    def __init__(self) -> None:
        super().__init__()
        self._q: deque[Task] = deque()

    def _queue(self, task: Task) -> None:
        self._q.append(task)

    def _pick(self, kind: str) -> Task | None:
        return self._q.popleft() if self._q else None

    def _empty(self, kind: str) -> bool:
        return not self._q


class Static(Scheduler):
    name = "static"

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.weights = dict(weights) if weights else None
        self._qs: dict[str, deque[Task]] = {}
        self._credit: dict[str, float] = {}

    def attach(self, kinds: Mapping[str, int]) -> None:
        super().attach(kinds)
        w = self.weights or {k: float(n) for k, n in kinds.items()}
        unknown = set(w) - set(kinds)
        if unknown:
            raise StreamError(f"static scheduler: no processor of kind {sorted(unknown)[0]!r}")
        self.weights = {k: float(v) for k, v in w.items() if v > 0}
        if not self.weights:
            raise StreamError("static scheduler: every weight is zero")
        self._qs = {k: deque() for k in kinds}
        self._credit = dict.fromkeys(self.weights, 0.0)

    def _queue(self, task: Task) -> None:
        assert self.weights is not None
        total = sum(self.weights.values())
        for k, w in self.weights.items():
            self._credit[k] += w
        kind = max(self._credit, key=lambda k: self._credit[k])
        self._credit[kind] -= total
        self._qs[kind].append(task)

    def _pick(self, kind: str) -> Task | None:
        q = self._qs.get(kind)
        return q.popleft() if q else None

    def _empty(self, kind: str) -> bool:
        return not self._qs.get(kind)


class HLS(Scheduler):
    name = "hls"

    def __init__(self, switch_threshold: int = 10, refresh: float = 1.0) -> None:
        super().__init__()
        if switch_threshold < 1:
            raise StreamError("HLS switch threshold must be at least 1")
        self.switch_threshold = switch_threshold
        self.refresh = refresh
        self._q: deque[Task] = deque()
        self.policy: dict[str, dict[int, float]] = {}  # kind -> query -> tasks/s
        self._acc: dict[tuple[str, int], list[float]] = {}  # (kind, q) -> [tasks, seconds]
        self._last_refresh = time.monotonic()
        self._in_row: Counter[int] = Counter()  # tasks the preferred kind took in a row

    def attach(self, kinds: Mapping[str, int]) -> None:
        super().attach(kinds)
        self.policy = {k: {} for k in kinds}

    def _queue(self, task: Task) -> None:
        self._q.append(task)

    def _empty(self, kind: str) -> bool:
        return not self._q

    def preferred(self, qid: int) -> str | None:
        best, rate = None, -1.0
        for kind, pol in self.policy.items():
            r = pol.get(qid)
            if r is None:
                return None  # some kind has no estimate yet: no preference
            if r > rate:
                best, rate = kind, r
        return best

    def _pick(self, kind: str) -> Task | None:
        skipped = 0.0
        for i, task in enumerate(self._q):
            q = task.plan.qid
            pref = self.preferred(q)
            if pref is None or pref == kind:
                if pref == kind:
                    self._in_row[q] += 1
                del self._q[i]
                return task
            own = self.policy[kind][q]
            # (the tolerance: ten skipped 1/100 s tasks are worth one 1/10 s task)
            if self._in_row[q] >= self.switch_threshold or skipped >= (1.0 - 1e-9) / own:
                self._in_row[q] = 0
                del self._q[i]
                return task
            skipped += 1.0 / self.policy[pref][q]
        return None

    def _record(self, kind: str, task: Task, seconds: float) -> None:
        q = task.plan.qid
        acc = self._acc.setdefault((kind, q), [0.0, 0.0])
        acc[0] += 1
        acc[1] += max(seconds, 1e-9)
        now = time.monotonic()
        if q not in self.policy[kind] or now - self._last_refresh >= self.refresh:
            self._update(kind, q)
            if now - self._last_refresh >= self.refresh:
                for k, qq in list(self._acc):
                    self._update(k, qq)
                self._last_refresh = now

    def _update(self, kind: str, q: int) -> None:
        acc = self._acc.get((kind, q))
        if not acc or acc[0] == 0:
            return
        workers = max(self.kinds.get(kind, 1), 1)
        self.policy[kind][q] = workers * acc[0] / acc[1]
        acc[0] = acc[1] = 0.0


def make_scheduler(spec: str | Scheduler, **kw: object) -> Scheduler:
    """A scheduler from its name (``fcfs``, ``static``, ``hls``) or as given."""
    if isinstance(spec, Scheduler):
        return spec
    if spec == "fcfs":
        return FCFS()
    if spec == "static":
        return Static(kw.get("weights"))  # type: ignore[arg-type]
    if spec == "hls":
        return HLS(
            int(kw.get("switch_threshold", 10)),  # type: ignore[call-overload]
            float(kw.get("refresh", 1.0)),  # type: ignore[arg-type]
        )
    raise StreamError(f"unknown scheduler {spec!r} (fcfs, static, hls)")
