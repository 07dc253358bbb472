"""Copy experiments and the holdout: assignment, and the Bayesian read-out. Pure (no I/O).

**Assignment** is a stable hash, never a random draw, so a redelivered webhook, a re-fold or a
reminder always lands a case in the same place:

- holdout: ``sha256("holdout:" + case_id)`` → a point in [0, 10000); the case is held out when
  the point is below ``holdout_percent × 100``. Held-out cases get no variant (they get no copy);
- variant: ``sha256(experiment_id + ":" + case_id)`` → a point in [0, Σweights); the variant is
  the one whose cumulative weight range holds the point, so the split follows the weights.

**Results** per variant use the cases that matured (≥ 14 days since the first failure, or
closed). Each variant's recovery rate gets a Beta(1 + recoveries, 1 + matured − recoveries)
posterior (uniform prior); ``prob_best`` is the posterior probability that it has the highest
rate, ``expected_loss`` the expected shortfall of its rate from the best one,
E[max_j θ_j − θ_k]. Both come from a Monte Carlo of ``DRAWS`` joint draws with a fixed seed
(``random.Random(SEED)``, ``betavariate``): the same data always gives the same figures.
A winner is named only at ``prob_best ≥ 0.95`` with ≥ 50 matured cases in every variant.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

SEED: Final = 20261201
DRAWS: Final = 20_000
WINNER_PROBABILITY: Final = 0.95
MIN_MATURED_PER_VARIANT: Final = 50
_HOLDOUT_SCALE: Final = 10_000  # basis points: a percent is a whole number of them


def _point(key: str, size: int) -> int:
    """A uniform integer in [0, size) from a stable hash of ``key``."""
    digest = hashlib.sha256(key.encode()).digest()
    return (int.from_bytes(digest[:8], "big") * size) >> 64


def in_holdout(case_id: str, holdout_percent: int) -> bool:
    """Whether a new case goes to the holdout (``holdout_percent`` of cases, by their id)."""
    if holdout_percent <= 0:
        return False
    return _point(f"holdout:{case_id}", _HOLDOUT_SCALE) < holdout_percent * (_HOLDOUT_SCALE // 100)


def assign_variant(experiment_id: str, case_id: str, weights: Sequence[tuple[str, int]]) -> str:
    """The variant of a case, proportional to the (name, weight) pairs; weights sum > 0."""
    total = sum(w for _, w in weights)
    if total <= 0:
        raise ValueError("weights must sum to more than 0")
    point = _point(f"{experiment_id}:{case_id}", total)
    for name, weight in weights:
        if point < weight:
            return name
        point -= weight
    raise AssertionError("unreachable: point < total")


@dataclass(frozen=True)
class ArmCounts:
    """What the database counted for one variant."""

    name: str
    cases: int = 0
    sends: int = 0
    clicks: int = 0  # cases whose tracked link was clicked at least once
    messaged: int = 0  # cases sent at least one message
    matured: int = 0
    recoveries: int = 0  # recovered (within 14 days, by definition) among the matured cases


@dataclass(frozen=True)
class ArmResult:
    name: str
    cases: int
    sends: int
    clicks: int
    ctr: float | None
    matured_cases: int
    recoveries: int
    recovery_rate: float | None
    prob_best: float | None
    expected_loss: float | None


@dataclass(frozen=True)
class Results:
    variants: list[ArmResult]
    winner: str | None
    winner_reason: str


def bayes(successes: Sequence[int], trials: Sequence[int], *, draws: int = DRAWS,
          seed: int = SEED) -> tuple[list[float], list[float]]:
    """(prob_best, expected_loss) per arm under independent Beta(1 + s, 1 + n − s) posteriors."""
    prob, loss = _bayes(tuple(successes), tuple(trials), draws, seed)
    return list(prob), list(loss)


@lru_cache(maxsize=512)
def _bayes(successes: tuple[int, ...], trials: tuple[int, ...], draws: int,
           seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # The draws are deterministic, so the same counts (a stopped experiment, a list page read
    # twice) are served from the cache instead of another ~0.1 s per arm of pure-Python draws.
    rng = random.Random(seed)
    arms = [(1 + s, 1 + n - s) for s, n in zip(successes, trials, strict=True)]
    wins = [0] * len(arms)
    loss = [0.0] * len(arms)
    for _ in range(draws):
        theta = [rng.betavariate(a, b) for a, b in arms]
        best = max(theta)
        wins[theta.index(best)] += 1
        for i, value in enumerate(theta):
            loss[i] += best - value
    return tuple(w / draws for w in wins), tuple(total / draws for total in loss)


def results(arms: Sequence[ArmCounts]) -> Results:
    """Per-variant figures, their Bayesian comparison, and the winner (or why there is none)."""
    prob, loss = bayes([a.recoveries for a in arms], [a.matured for a in arms])
    out = [ArmResult(name=a.name, cases=a.cases, sends=a.sends, clicks=a.clicks,
                     ctr=a.clicks / a.messaged if a.messaged else None, matured_cases=a.matured,
                     recoveries=a.recoveries,
                     recovery_rate=a.recoveries / a.matured if a.matured else None,
                     prob_best=round(p, 4), expected_loss=round(x, 5))
           for a, p, x in zip(arms, prob, loss, strict=True)]
    fewest = min((a.matured for a in arms), default=0)
    if fewest < MIN_MATURED_PER_VARIANT:
        return Results(out, None, f"needs {MIN_MATURED_PER_VARIANT} matured cases per variant; "
                                  f"has {fewest}")
    leader = max(out, key=lambda r: r.prob_best or 0.0)
    if (leader.prob_best or 0.0) < WINNER_PROBABILITY:
        return Results(out, None, f"no variant is {WINNER_PROBABILITY:.0%} likely to be best yet; "
                                  f"{leader.name} leads at {leader.prob_best:.0%}")
    return Results(out, leader.name, f"{leader.name} has the best recovery rate with probability "
                                     f"{leader.prob_best:.1%}")
