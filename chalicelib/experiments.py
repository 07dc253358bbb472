"""Copy experiments and the holdout: assignment, and the Bayesian read-out. Pure (no I/O).

**Assignment** is a stable hash, never a random draw, so a redelivered webhook, a re-fold or a
reminder always lands a case in the same place:

- holdout: ``sha256("holdout:" + case_id)`` → a point in [0, 10000); the case is held out when
  the point is below ``holdout_percent × 100``. Held-out cases get no variant (they get no copy);
- variant: ``sha256(experiment_id + ":" + case_id)`` → a point in [0, Σweights); the variant is
  the one whose cumulative weight range holds the point, so the split follows the weights.

**Results** per variant count matured, eligible cases only: the case's 14-day window has
elapsed (``first_failure_at + 14 days ≤ now``, whatever its status: a young case that already
closed is not matured, or recoveries would be over-counted), and Rebound opened it before that
window ended (a case first heard of too late was never messaged). Younger cases are reported
apart ("maturing: N cases, M recovered so far"), never mixed in.

**The decision** (``decide``) is sequential-safe (``chalicelib.sequential``): a winner is named
only when its always-valid 95% interval against every other variant lies above 0 (Bonferroni
over the pairs), so looking every day does not inflate the false-winner rate. Before that the
experiment is ``collecting`` and says how many matured cases per variant a +10 pts gap needs;
when every pair's interval lies within ±10 pts there is ``no_winner`` worth waiting for; a
broken split (sample ratio mismatch) names no winner at all.

**Descriptive figures**: each variant's rate gets a Beta(1 + recoveries, 1 + matured −
recoveries) posterior; ``prob_best`` is the posterior probability that it has the highest rate,
``expected_loss`` the expected shortfall from the best, E[max_j θ_j − θ_k], from ``DRAWS`` joint
Monte Carlo draws with a fixed seed (the same data always gives the same figures). They describe
the data; they decide nothing, and are null until every variant has a matured case.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

from chalicelib import sequential

SEED: Final = 20261201
DRAWS: Final = 20_000
MIN_MATURED_PER_VARIANT: Final = 30  # the normal approximation's floor, as for the lift
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
    cases: int = 0  # every case assigned to it (the sample-ratio check counts these)
    sends: int = 0
    clicks: int = 0  # cases whose tracked link was clicked at least once
    messaged: int = 0  # cases sent at least one message
    matured: int = 0  # matured, eligible cases
    recoveries: int = 0  # recovered (within 14 days, by definition) among them
    weight: int = 1
    maturing: int = 0  # eligible cases whose window is still open
    maturing_recoveries: int = 0  # of those, recovered so far


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
    maturing_cases: int
    maturing_recoveries: int


Decision = Literal["collecting", "winner", "no_winner", "sample_ratio_mismatch"]


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    winner: str | None = None
    cases_needed_per_variant: int | None = None  # matured cases per variant for +10 pts
    srm_p_value: float | None = None


@dataclass(frozen=True)
class Results:
    variants: list[ArmResult]
    winner: str | None
    winner_reason: str
    decision: Decision
    decision_reason: str
    cases_needed_per_variant: int | None
    srm_p_value: float | None


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


def _compared(arms: Sequence[ArmCounts]) -> list[ArmCounts]:
    """The variants a decision compares: a zero-weight variant that never got a case is not one."""
    return [a for a in arms if a.weight > 0 or a.cases > 0]


def _round_up(n: int, step: int = 10) -> int:
    return -(-n // step) * step


def decide(arms: Sequence[ArmCounts], *, running: bool) -> Verdict:
    """The sequential-safe decision over the variants' matured counts (module doc)."""
    srm = sequential.srm_p_value([a.cases for a in arms], [a.weight for a in arms])
    if srm is not None and srm < sequential.SRM_P:
        return Verdict("sample_ratio_mismatch",
                       f"Cases are not split as the weights say (chi-square p = {srm:.2g} < 0.001): "
                       "something breaks the assignment, so no result can be trusted and no winner "
                       "is named.", srm_p_value=srm)
    compared = _compared(arms)
    matured = [a.matured for a in compared]
    pooled = sum(a.recoveries for a in compared) / sum(matured) if sum(matured) else 0.3
    needed = _round_up(sequential.cases_to_detect(pooled, len(compared)))
    fewest = min(matured, default=0)
    more = max(0, needed - fewest, MIN_MATURED_PER_VARIANT - fewest)
    needs = f"About {more} more matured cases per variant to detect +{sequential.DETECT * 100:.0f} pts."
    if fewest < MIN_MATURED_PER_VARIANT:
        why = (f"Needs {MIN_MATURED_PER_VARIANT} matured cases in every variant before any decision; "
               f"the smallest has {fewest}.")
        return _undecided(running, why, needs, needed, srm)
    pairs = sequential.differences([a.recoveries for a in compared], matured)
    for i, arm in enumerate(compared):
        beats = [d.low > 0 if d.a == i else d.high < 0 for d in pairs if i in (d.a, d.b)]
        if beats and all(beats):
            return Verdict("winner", f"{arm.name} recovers more than every other variant: its always-valid "
                                     "95% interval against each lies above 0 (safe to read at any time).",
                           arm.name, needed, srm)
    if all(d.low > -sequential.DETECT and d.high < sequential.DETECT for d in pairs):
        return Verdict("no_winner", "No variant differs from another by 10 pts or more (always-valid 95% "
                                    "intervals): keep either copy.", None, needed, srm)
    why = "No variant is ahead beyond chance yet (always-valid 95% intervals, safe to check daily)."
    return _undecided(running, why, needs, needed, srm)


def _undecided(running: bool, why: str, needs: str, needed: int, srm: float | None) -> Verdict:
    if running:
        return Verdict("collecting", f"{why} {needs}", None, needed, srm)
    return Verdict("no_winner", f"Stopped before the data named a winner. {why}", None, needed, srm)


def results(arms: Sequence[ArmCounts], *, running: bool = True) -> Results:
    """Per-variant figures, the decision, and the descriptive Bayesian comparison."""
    compared = _compared(arms)
    described = bool(compared) and all(a.matured > 0 for a in compared)
    figures: dict[str, tuple[float, float]] = {}
    if described:
        prob, loss = bayes([a.recoveries for a in compared], [a.matured for a in compared])
        figures = {a.name: (round(p, 4), round(x, 5)) for a, p, x in zip(compared, prob, loss, strict=True)}
    out = [ArmResult(name=a.name, cases=a.cases, sends=a.sends, clicks=a.clicks,
                     ctr=a.clicks / a.messaged if a.messaged else None, matured_cases=a.matured,
                     recoveries=a.recoveries,
                     recovery_rate=a.recoveries / a.matured if a.matured else None,
                     prob_best=figures[a.name][0] if a.name in figures else None,
                     expected_loss=figures[a.name][1] if a.name in figures else None,
                     maturing_cases=a.maturing, maturing_recoveries=a.maturing_recoveries)
           for a in arms]
    verdict = decide(arms, running=running)
    return Results(out, verdict.winner, verdict.reason, verdict.decision, verdict.reason,
                   verdict.cases_needed_per_variant, verdict.srm_p_value)
