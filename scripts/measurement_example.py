"""Print the measurement figures of a seeded example (issue 10's note): lift with its interval,
an experiment's sequential decision and its descriptive Bayesian read-out, decline classes and
the time-to-recovery curve.

Pure: the same domain functions the API calls, on a synthetic company generated with a fixed
seed (nothing is read from or written to a database).
Run: ``.venv/bin/python -m scripts.measurement_example``.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from chalicelib import experiments
from chalicelib.kpis import CaseTimes, StatusCount, cohorts, report
from chalicelib.models import RECOVERY_WINDOW

SEED = 20261201
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
# True recovery probabilities of the synthetic company, by decline class, without and with nudges.
BASE = {"card_soft": 0.35, "card_hard": 0.10, "authentication": 0.30, "unknown": 0.25}
NUDGE_EFFECT = {"control": 0.12, "short": 0.18}


def main() -> None:
    rng = random.Random(SEED)
    rows: list[StatusCount] = []
    times: list[CaseTimes] = []
    arms = {name: experiments.ArmCounts(name=name) for name in NUDGE_EFFECT}
    for i in range(1200):
        case_id = f"case-{i:05d}"
        first = NOW - timedelta(days=rng.uniform(0, 84))
        cls = rng.choices(list(BASE), weights=[50, 25, 10, 15])[0]
        holdout = experiments.in_holdout(case_id, 20)
        variant = None if holdout else experiments.assign_variant("exp-1", case_id,
                                                                  [("control", 1), ("short", 1)])
        p = BASE[cls] + (0 if variant is None else NUDGE_EFFECT[variant])
        recovered_after = rng.uniform(0, 14) if rng.random() < p else None
        age = NOW - first
        if recovered_after is not None and first + timedelta(days=recovered_after) <= NOW:
            status, recovered_at = "recovered", first + timedelta(days=recovered_after)
        elif age > RECOVERY_WINDOW:
            status, recovered_at = rng.choice(["expired", "expired", "expired", "cancelled"]), None
        else:
            status, recovered_at = "open", None
        matured = age >= RECOVERY_WINDOW  # the window has elapsed, whatever the status
        cost = 333 if not holdout and rng.random() < 0.3 else 0
        if age <= timedelta(days=30):
            rows.append(StatusCount(status=status, currency="usd", cases=1,
                                    recovered_minor=1999 if status == "recovered" else 0,
                                    decline_class=cls,
                                    holdout=holdout, matured=matured, incentive_cost_minor=cost,
                                    in_lift=True,
                                    recovered_squares=1999 ** 2 if status == "recovered" else 0))
        times.append(CaseTimes(first_failure_at=first, status=status, recovered_at=recovered_at,
                               currency="usd", recovered_minor=1999 if status == "recovered" else 0,
                               decline_class=cls))
        if variant is not None:
            a = arms[variant]
            arms[variant] = experiments.ArmCounts(
                name=variant, cases=a.cases + 1, sends=a.sends + 2, clicks=a.clicks + (rng.random() < 0.4),
                messaged=a.messaged + 1, matured=a.matured + matured,
                recoveries=a.recoveries + (status == "recovered" and matured),
                maturing=a.maturing + (not matured),
                maturing_recoveries=a.maturing_recoveries + (status == "recovered" and not matured))
    kpis = report(30, rows, [])
    result = experiments.results(list(arms.values()))
    weekly = cohorts(times, NOW, ZoneInfo("UTC"), 12)
    print(json.dumps({
        "kpis_30d": kpis.model_dump(mode="json", exclude={"previous"}),
        "experiment": {"variants": [v.__dict__ for v in result.variants], "winner": result.winner,
                       "decision": result.decision, "decision_reason": result.decision_reason},
        "time_to_recovery": [p.recovered_share for p in weekly.time_to_recovery],
        "maturing_weeks": [c.week for c in weekly.cohorts if c.maturing],
    }, indent=1))


if __name__ == "__main__":
    main()
