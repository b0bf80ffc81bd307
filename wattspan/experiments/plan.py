"""The order in which an experiment's repetitions run.

* ``sequential``: each configuration's warm-ups, then its measured repetitions, one
  configuration after the other (hyperfine's order). Cheapest on caches, most exposed to
  drift: a machine that heats up during the experiment makes later configurations look slower.
* ``interleaved`` (the default): warm-up rounds (every configuration once per round), then
  measured rounds (every configuration once per round), so slow drift lands on every
  configuration alike.
* ``random``: warm-up rounds as above, then the measured repetitions of all configurations
  in a random order drawn from the experiment's seed (the same seed gives the same plan, which
  is what resuming relies on).

A repetition's number is its place among its configuration's repetitions of the same phase
in execution order, so repetition 0 always ran first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

WARMUP = "warmup"
MEASURED = "measured"


@dataclass(frozen=True, slots=True)
class Item:
    """One repetition to run: ``seq`` is its position in the plan."""

    seq: int
    config: int
    phase: str
    repetition: int

    @property
    def warmup(self) -> bool:
        return self.phase == WARMUP


def make_plan(
    n_configs: int, warmups: int, repetitions: int, order: str, seed: int = 0
) -> list[Item]:
    if order not in ("sequential", "interleaved", "random"):
        raise ValueError(f"unknown order {order!r}")
    pairs: list[tuple[int, str]] = []
    if order == "sequential":
        for c in range(n_configs):
            pairs += [(c, WARMUP)] * warmups + [(c, MEASURED)] * repetitions
    else:
        rng = random.Random(seed)
        for _ in range(warmups):
            round_ = list(range(n_configs))
            if order == "random":
                rng.shuffle(round_)
            pairs += [(c, WARMUP) for c in round_]
        measured = [(c, MEASURED) for _ in range(repetitions) for c in range(n_configs)]
        if order == "random":
            rng.shuffle(measured)
        pairs += measured
    counts: dict[tuple[int, str], int] = {}
    out: list[Item] = []
    for seq, (c, phase) in enumerate(pairs):
        n = counts.get((c, phase), 0)
        counts[(c, phase)] = n + 1
        out.append(Item(seq, c, phase, n))
    return out
