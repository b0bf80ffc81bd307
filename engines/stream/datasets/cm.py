"""Cluster monitoring: task events shaped like Google's 2011 cluster trace (SABER's CM).

Columns (LightSaber's tuple order and types):

=========== ======= =============================================================
column      dtype   values
=========== ======= =============================================================
timestamp   int64   seconds, ``start + i // rate``, non-decreasing
jobId       int64   ``JOB_ID_BASE + [0, jobs)``, Zipf(``job_skew``): a few jobs with
                    many tasks dominate, as in the trace
taskId      int64   index of the task in its job, Zipf(1.5) over ``[0, 1000)``
machineId   int64   ``[0, machines)``, uniform (the scheduler spreads load)
eventType   int32   ``EVENT_TYPES`` codes (approximate trace frequencies; 3 = FAIL)
userId      int32   the job's user: ``[0, users)``, Zipf(``user_skew``) over jobs
category    int32   the job's scheduling class 0..3 (0 = batch ... 3 = latency-critical)
priority    int32   the job's priority 0..11 (trace-like: mostly 0, 1, 4, 9)
cpu         float32 the job's normalised CPU request in (0, 1], log-normal
ram         float32 the job's normalised memory request in (0, 1], log-normal
disk        float32 the job's normalised disk request in (0, 1], log-normal
constraints int32   1 when the job has placement constraints (10 % of jobs)
=========== ======= =============================================================

Everything but timestamp, taskId, machineId and eventType belongs to the job (a static
per-job table), so e.g. CM1's ``sum(cpu) by category`` sees job-level correlation.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from wattspan.engines.stream.datasets._common import (
    Batch,
    Dataset,
    affine_bijection,
    apply_bijection,
    categorical,
    check_count,
    zipf_ranks,
)
from wattspan.engines.stream.schema import CM_SCHEMA, Schema

EVENT_TYPES = (
    "SUBMIT",
    "SCHEDULE",
    "EVICT",
    "FAIL",
    "FINISH",
    "KILL",
    "LOST",
    "UPDATE_PENDING",
    "UPDATE_RUNNING",
)
FAIL = EVENT_TYPES.index("FAIL")
_EVENT_PROBS = (0.30, 0.29, 0.03, 0.04, 0.17, 0.12, 0.001, 0.005, 0.045)
_CATEGORY_PROBS = (0.57, 0.28, 0.13, 0.02)
_PRIORITY_PROBS = (0.30, 0.25, 0.05, 0.01, 0.25, 0.02, 0.01, 0.01, 0.03, 0.06, 0.005, 0.005)
JOB_ID_BASE = 6_000_000_000  # trace job ids are ~6e9: too wide for a direct array index
TASKS = 1000

SCHEMA = CM_SCHEMA


def _request(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(median), sigma, n), 1e-4, 1.0).astype(np.float32)


class CM(Dataset):
    """CM task events; ``rate`` defaults to 2,000 events per second."""

    name = "cm"
    tag = 2
    schema: ClassVar[Schema] = SCHEMA
    default_rate = 2_000

    def __init__(
        self,
        seed: int = 0,
        *,
        rate: int | None = None,
        start: int = 0,
        jobs: int = 20_000,
        machines: int = 12_500,
        users: int = 1_000,
        job_skew: float = 1.1,
        user_skew: float = 1.2,
    ) -> None:
        self.jobs = check_count("jobs", jobs)
        self.machines = check_count("machines", machines)
        self.users = check_count("users", users)
        self.job_skew, self.user_skew = job_skew, user_skew
        super().__init__(seed, rate=rate, start=start)

    def _static(self, rng: np.random.Generator) -> None:
        n = self.jobs
        user_map = affine_bijection(rng, self.users)
        self._job_map = affine_bijection(rng, n)
        self._machine_map = affine_bijection(rng, self.machines)
        # Per-job attributes, indexed by the job's offset from JOB_ID_BASE.
        self.job_table: Batch = {
            "userId": apply_bijection(
                zipf_ranks(rng, self.users, self.user_skew, n), user_map, self.users
            ).astype(np.int32),
            "category": categorical(rng, np.asarray(_CATEGORY_PROBS), n).astype(np.int32),
            "priority": categorical(rng, np.asarray(_PRIORITY_PROBS), n).astype(np.int32),
            "cpu": _request(rng, 0.03, 0.9, n),
            "ram": _request(rng, 0.02, 0.9, n),
            "disk": _request(rng, 0.0003, 1.2, n),
            "constraints": (rng.random(n) < 0.1).astype(np.int32),
        }

    def _fill(self, rng: np.random.Generator, idx: np.ndarray, ts: np.ndarray) -> Batch:
        n = len(idx)
        job = apply_bijection(
            zipf_ranks(rng, self.jobs, self.job_skew, n), self._job_map, self.jobs
        )
        t = self.job_table
        return {
            "timestamp": ts,
            "jobId": job + JOB_ID_BASE,
            "taskId": zipf_ranks(rng, TASKS, 1.5, n),
            "machineId": apply_bijection(
                rng.integers(0, self.machines, n), self._machine_map, self.machines
            ),
            "eventType": categorical(rng, np.asarray(_EVENT_PROBS), n),
            "userId": t["userId"][job],
            "category": t["category"][job],
            "priority": t["priority"][job],
            "cpu": t["cpu"][job],
            "ram": t["ram"][job],
            "disk": t["disk"][job],
            "constraints": t["constraints"][job],
        }
