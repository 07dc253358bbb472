"""Sequential-safe comparison of recovery rates, and the sample-ratio check. Pure (no I/O).

A creator may open an experiment's results every day. A rule like "name the leader once it is
95% likely to be best" is then checked hundreds of times, and under no difference at all it
names a winner far more often than 5% of the time (43% in issue 17's simulation). The rule here
is a **confidence sequence**: an interval for the difference of two recovery rates that holds at
every moment at once, however often (and whenever) it is read, so stopping as soon as it
excludes 0 keeps the false-winner rate at the stated level.

- For variants a and b with ``s`` recoveries of ``n`` matured cases each, the difference
  ``d = s_a/n_a − s_b/n_b`` has variance ``V = p_a(1−p_a)/n_a + p_b(1−p_b)/n_b`` (each ``p``
  smoothed to ``(s + ½)/(n + 1)`` so a 0% or 100% arm still has variance). In the information
  scale ``v = 1/V`` the centred sum ``(d − δ)·v`` behaves like a Brownian motion at time ``v``,
  and Robbins' **two-sided normal mixture** bound of Howard, Ramdas, McAuliffe & Sekhon (2021,
  "Time-uniform, nonparametric, nonasymptotic confidence sequences", eq. 14) holds uniformly
  over time with probability ≥ 1 − α:
  ``|d − δ|·v ≤ sqrt((v + ρ)·(log(1 + v/ρ) + 2·log(1/α)))``.
  ``ρ`` makes the bound tightest at ``v_opt`` (their ``best_rho``), fixed in advance: the
  information of 400 matured cases per variant at the worst-case variance. This is the mSPRT
  of Johari et al. (2017) with mixing variance ``1/ρ``, written as an interval. Tests compare
  the bound with ``confseq``, Howard's reference implementation.
- With ``k`` variants there are ``k(k−1)/2`` pairs, each at ``α = 5% / pairs`` (Bonferroni), so
  the chance that any pair wrongly excludes 0 stays ≤ 5% across all comparisons.
- **Sample ratio mismatch**: Pearson's chi-square of the cases assigned per variant against the
  weights; ``p < 0.001`` means the split is broken (a bug, a redirect, lost events) and no result
  can be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

ALPHA: Final = 0.05
SRM_P: Final = 0.001
PLANNED_PER_VARIANT: Final = 400  # where the bound is tightest (ρ is fixed from it, never from data)
DETECT: Final = 0.10  # the effect the "what it still needs" figure is about: +10 pts
POWER_Z: Final = 0.8416212335729143  # 80% power (the 80% quantile of the standard normal)


def best_rho(v_opt: float, alpha: float) -> float:
    """The mixing parameter that makes the two-sided bound tightest at intrinsic time ``v_opt``
    (Howard et al. 2021, the ``best_rho`` of confseq's TwoSidedNormalMixture)."""
    log_inv = math.log(1 / alpha)
    return v_opt / (2 * log_inv + math.log(1 + 2 * log_inv))


def normal_mixture_bound(v: float, alpha: float, v_opt: float, alpha_opt: float = ALPHA) -> float:
    """Two-sided normal mixture uniform boundary on |S_t| at intrinsic time ``v`` (confseq's
    ``normal_mixture_bound(v, alpha, v_opt, alpha_opt, is_one_sided=False)``)."""
    rho = best_rho(v_opt, alpha_opt)
    return math.sqrt((v + rho) * (math.log(1 + v / rho) + 2 * math.log(1 / alpha)))


def _smoothed(s: int, n: int) -> float:
    return (s + 0.5) / (n + 1)


def _variance(s: int, n: int) -> float:
    p = _smoothed(s, n)
    return p * (1 - p) / n


# The information of PLANNED_PER_VARIANT cases per arm at the worst-case variance (p = ½).
V_OPT: Final = 1 / (2 * 0.25 / PLANNED_PER_VARIANT)


@dataclass(frozen=True)
class Difference:
    """``a − b`` in recovery rate and its always-valid interval (None while an arm is empty)."""

    a: int  # index of the first variant
    b: int
    estimate: float
    low: float
    high: float


def difference(sa: int, na: int, sb: int, nb: int, alpha: float) -> tuple[float, float, float]:
    """(estimate, low, high) of p_a − p_b: the confidence sequence at level 1 − ``alpha``."""
    estimate = sa / na - sb / nb
    info = 1 / (_variance(sa, na) + _variance(sb, nb))
    half = normal_mixture_bound(info, alpha, V_OPT) / info
    return estimate, max(-1.0, estimate - half), min(1.0, estimate + half)


def pair_alpha(arms: int) -> float:
    """Each pair's level so that all k(k−1)/2 comparisons together stay within ALPHA."""
    return ALPHA / max(1, arms * (arms - 1) // 2)


def differences(successes: Sequence[int], trials: Sequence[int]) -> list[Difference]:
    """Every pair's always-valid interval (Bonferroni over the pairs); every arm needs a case."""
    alpha = pair_alpha(len(trials))
    out = []
    for a in range(len(trials)):
        for b in range(a + 1, len(trials)):
            est, low, high = difference(successes[a], trials[a], successes[b], trials[b], alpha)
            out.append(Difference(a, b, est, low, high))
    return out


def half_width(p_a: float, p_b: float, n: int, alpha: float) -> float:
    """The interval's half-width with ``n`` matured cases in each of two arms at these rates."""
    info = 1 / ((p_a * (1 - p_a) + p_b * (1 - p_b)) / n)
    return normal_mixture_bound(info, alpha, V_OPT) / info


def cases_to_detect(rate: float, arms: int, effect: float = DETECT, limit: int = 1_000_000) -> int:
    """Matured cases per variant at which a true gap of ``effect`` around ``rate`` would be named
    about 80% of the time: the gap must clear the half-width by 0.84 standard errors."""
    p_hi = min(0.99, max(0.01, rate) + effect / 2)
    p_lo = max(0.01, p_hi - effect)
    alpha = pair_alpha(arms)

    def enough(n: int) -> bool:
        sd = math.sqrt((p_hi * (1 - p_hi) + p_lo * (1 - p_lo)) / n)
        return effect - half_width(p_hi, p_lo, n, alpha) >= POWER_Z * sd

    low, high = 1, 2
    while not enough(high):
        if high >= limit:
            return limit
        low, high = high, high * 2
    while low < high:  # the smallest n that is enough (the margin grows with n)
        mid = (low + high) // 2
        if enough(mid):
            high = mid
        else:
            low = mid + 1
    return high


# --- sample ratio mismatch ---------------------------------------------------------------------


def chi2_sf(x: float, df: int) -> float:
    """P(χ²_df ≥ x) for a whole number of degrees of freedom (closed forms; no scipy in Lambda)."""
    if df < 1:
        raise ValueError("df must be at least 1")
    if x <= 0:
        return 1.0
    half = x / 2
    if df % 2 == 0:  # Q(x; 2) = e^{−x/2}; Q(x; k+2) = Q(x; k) + (x/2)^{k/2} e^{−x/2} / (k/2)!
        term = total = math.exp(-half)
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return min(1.0, total)
    # Q(x; 1) = erfc(sqrt(x/2)); Q(x; k+2) = Q(x; k) + (x/2)^{k/2} e^{−x/2} / Γ(k/2 + 1)
    total = math.erfc(math.sqrt(half))
    term = math.sqrt(half) * math.exp(-half) / math.gamma(1.5)
    for i in range(df // 2):
        total += term
        term *= half / (i + 1.5)
    return min(1.0, max(0.0, total))


def srm_p_value(counts: Sequence[int], weights: Sequence[int]) -> float | None:
    """Pearson's chi-square p-value of assignment ``counts`` against ``weights``; None while some
    expected count is under 5 (too few cases for the test). A case in a zero-weight variant can
    only come from a broken split: p = 0."""
    total = sum(counts)
    weight_sum = sum(weights)
    if total == 0 or weight_sum <= 0:
        return None
    if any(c > 0 and w == 0 for c, w in zip(counts, weights, strict=True)):
        return 0.0
    cells = [(c, total * w / weight_sum) for c, w in zip(counts, weights, strict=True) if w > 0]
    if len(cells) < 2 or min(e for _, e in cells) < 5:
        return None
    stat = sum((c - e) ** 2 / e for c, e in cells)
    return chi2_sf(stat, len(cells) - 1)
