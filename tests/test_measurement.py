"""Honest measurement (issue 10): assignment, decline classes, copy, the statistics against
reference values, and the API end to end (real Postgres as the runtime role, the fake Whop)."""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from chalicelib import effects, experiments, lift, measurement, messages, scheduler
from chalicelib.kpis import CaseTimes, cohorts
from chalicelib.messages import VariantCopy, decline_class
from chalicelib.models import Case, CaseStatus
from chalicelib.tenancy import tenant_transaction
from chalicelib.whop_client import get_whop
from tests.helpers import payment_event, run_concurrently
from tests.test_api_cases import insert_case
from tests.test_api_support import ADMIN_B, ALPHA, BRAVO, DAY, NOW, Api, api_fixture, parse_csv  # noqa: F401

C = "/api/companies/{company_id}"
EXPS, EXP = f"{C}/experiments", f"{C}/experiments/{{experiment_id}}"
STOP = f"{EXP}/stop"
KPIS, COHORTS, EXPORT = f"{C}/kpis", f"{C}/kpis/cohorts", f"{C}/cases/export.csv"
SETTINGS, ONE, NUDGE = f"{C}/settings", f"{C}/cases/{{case_id}}", f"{C}/cases/{{case_id}}/nudge"


# --- assignment -----------------------------------------------------------------------------------


def _ids(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def test_variant_assignment_is_deterministic_and_follows_the_weights() -> None:
    exp_id, weights = str(uuid.UUID(int=42)), [("control", 5), ("short", 3), ("urgent", 2)]
    ids = _ids(10_000)
    first = [experiments.assign_variant(exp_id, i, weights) for i in ids]
    assert first == [experiments.assign_variant(exp_id, i, weights) for i in ids]  # same every time
    shares = Counter(first)
    for name, weight in weights:
        assert abs(shares[name] / len(ids) - weight / 10) <= 0.02, (name, shares)
    # A weight of 0 gets nothing; another experiment id reshuffles (independent of the first).
    assert {experiments.assign_variant(exp_id, i, [("a", 0), ("b", 1)]) for i in ids[:500]} == {"b"}
    other = [experiments.assign_variant(str(uuid.UUID(int=43)), i, weights) for i in ids]
    assert sum(a == b for a, b in zip(first, other, strict=True)) / len(ids) < 0.45
    with pytest.raises(ValueError):
        experiments.assign_variant(exp_id, ids[0], [("a", 0), ("b", 0)])


@pytest.mark.parametrize("percent", [0, 5, 20, 50])
def test_holdout_assignment_is_deterministic_and_within_2_points(percent: int) -> None:
    ids = _ids(10_000, seed=percent)
    held = [experiments.in_holdout(i, percent) for i in ids]
    assert held == [experiments.in_holdout(i, percent) for i in ids]
    assert abs(sum(held) / len(ids) - percent / 100) <= 0.02
    if percent == 0:
        assert not any(held)
    # Raising the percentage only adds cases: nobody leaves the holdout.
    assert all(experiments.in_holdout(i, 50) for i, h in zip(ids, held, strict=True) if h)


# --- decline classes ------------------------------------------------------------------------------

DECLINES: list[tuple[str | None, str | None, str, str]] = [
    ("insufficient_funds", "Your card has insufficient funds.", "payment.failed", "card_soft"),
    ("generic_decline", None, "payment.failed", "card_soft"),
    ("processing_error", None, "payment.failed", "card_soft"),
    ("card_velocity_exceeded", None, "payment.failed", "card_soft"),
    ("try_again_later", None, "payment.failed", "card_soft"),
    ("do_not_honor", None, "payment.failed", "card_soft"),  # Stripe: retry may work
    ("bank_generic_decline", None, "payment.failed", "card_soft"),
    ("sepa_generic_decline", None, "payment.failed", "card_soft"),
    ("expired_card", "Your card has expired.", "payment.failed", "card_hard"),
    ("lost_card", None, "payment.failed", "card_hard"),
    ("stolen_card", None, "payment.failed", "card_hard"),
    ("invalid_card_number", None, "payment.failed", "card_hard"),
    ("incorrect_number", None, "payment.failed", "card_hard"),  # Stripe's code
    ("pickup_card", None, "payment.failed", "card_hard"),
    ("closed_account", None, "payment.failed", "card_hard"),
    ("bank_account_closed", None, "payment.failed", "card_hard"),
    ("do_not_honor_permanent", None, "payment.failed", "card_hard"),
    ("authentication_required", None, "payment.failed", "authentication"),
    ("three_d_secure_timeout", None, "payment.failed", "authentication"),
    (None, None, "payment.requires_action", "authentication"),
    ("insufficient_funds", None, "payment.requires_action", "authentication"),  # the bank asks now
    ("EXPIRED-CARD", None, "payment.failed", "card_hard"),  # case and dashes do not matter
    (None, "Your card was declined.", "payment.failed", "card_soft"),
    (None, "This card has expired", "payment.failed", "card_hard"),
    (None, "3D Secure authentication is required", "payment.failed", "authentication"),
    (None, None, "payment.failed", "unknown"),
    ("something_new", "¿Qué? \u202e", "payment.failed", "unknown"),
]


@pytest.mark.parametrize(("code", "message", "event_type", "expected"), DECLINES)
def test_decline_classes(code: str | None, message: str | None, event_type: str, expected: str) -> None:
    assert decline_class(code, message, event_type) == expected


# --- copy -----------------------------------------------------------------------------------------


def _case(**kw: Any) -> Case:
    at = datetime(2026, 11, 2, 15, tzinfo=UTC)
    values: dict[str, Any] = {"seq": 1, "company_id": ALPHA, "membership_id": "mem_1", "user_id": "u",
                              "status": CaseStatus.OPEN, "first_failure_at": at, "last_failure_at": at,
                              "failure_count": 1, "amount_minor": 1999, "currency": "usd", **kw}
    return Case.model_validate(values)


def test_variant_copy_is_plain_text_in_a_dm_and_defaults_fill_the_gaps() -> None:
    case = _case(decline_class="card_hard")
    now = case.first_failure_at + timedelta(hours=1)
    variant = VariantCopy(dm_body="Hi *there* [click](http://evil.example) <b>x</b> # {product}: {link}")
    copy = messages.render("t0", case, "https://rb.test/r/tok", now, "Pro [VIP]", variant)
    assert copy.dm == ("Hi \\*there\\* \\[click\\](http://evil.example) \\<b\\>x\\</b\\> \\# Pro \\[VIP\\]: "
                       "https://rb.test/r/tok")
    # Parts the variant leaves out are the class's default copy (hard decline: "update your card").
    assert copy.title == "Your card needs updating"
    assert copy.push == "The card on file for Pro [VIP] no longer works. Update it to keep access. " \
                        "https://rb.test/r/tok"
    assert messages.render("t0", case, "L", now, None).push.startswith("The card on file for your membership")
    long_name = messages.render("t0", case, "L", now, "x" * 500).push
    assert "x" * 59 + "…" in long_name and "x" * 60 not in long_name


@pytest.mark.parametrize(("text", "link", "problem"), [
    ("Pay here", True, "must contain {link}"),
    ("{link} {name}", True, "unknown placeholder {name}"),
    ("{link.__class__}", True, "unknown placeholder {link.__class__}"),
    ("{amount!r} {link}", True, "unknown placeholder {amount!r}"),
    ("{amount:>99999} {link}", True, "unknown placeholder {amount:>99999}"),
    ("{link", True, "unbalanced braces"),
    ("x" * 301 + "{link}", True, "at most 300 characters"),
    ("   ", True, "must not be empty"),
    ("bad\x00nul {link}", True, "control characters"),
])
def test_creator_copy_checks(text: str, link: bool, problem: str) -> None:
    found = messages.check_copy(text, field="push_body", max_chars=300, requires_link=link)
    assert found is not None and problem in found
    assert messages.check_copy("Fix {product} for {amount}, {days_left} days: {link} {{ok}}", field="x",
                               max_chars=300, requires_link=True) is None


# --- statistics against references ----------------------------------------------------------------

# Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score, no CC).
NEWCOMBE_TABLE_II = [((56, 70, 48, 80), (0.0524, 0.3339)), ((9, 10, 3, 10), (0.1705, 0.8090)),
                     ((6, 7, 2, 7), (0.0582, 0.8062)), ((5, 56, 0, 29), (-0.0381, 0.1926)),
                     ((0, 10, 0, 20), (-0.1611, 0.2775)), ((10, 10, 0, 20), (0.6791, 1.0))]


@pytest.mark.parametrize(("counts", "published"), NEWCOMBE_TABLE_II)
def test_lift_interval_matches_newcombes_published_values(counts: tuple[int, int, int, int],
                                                          published: tuple[float, float]) -> None:
    low, high = lift.newcombe(*counts)
    assert (round(low, 4), round(high, 4)) == published


def test_wilson_matches_published_values() -> None:
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (score).
    assert tuple(round(x, 4) for x in lift.wilson(81, 263)) == (0.2553, 0.3662)
    assert tuple(round(x, 4) for x in lift.wilson(15, 148)) == (0.0624, 0.1605)
    assert tuple(round(x, 4) for x in lift.wilson(0, 20)) == (0.0, 0.1611)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _p_b_beats_a(a1: int, b1: int, a2: int, b2: int) -> float:
    """Exact P(θ_B > θ_A) for θ_A ~ Beta(a1, b1), θ_B ~ Beta(a2, b2), a2 an integer (Evan Miller)."""
    return sum(math.exp(_log_beta(a1 + i, b1 + b2) - math.log(b2 + i) - _log_beta(1 + i, b2)
                        - _log_beta(a1, b1)) for i in range(a2))


def test_bayesian_figures_match_the_exact_two_arm_computation() -> None:
    # A: 40 of 100 recovered, B: 52 of 100. Posteriors Beta(41, 61) and Beta(53, 49).
    prob, loss = experiments.bayes([40, 52], [100, 100])
    exact_b = _p_b_beats_a(41, 61, 53, 49)
    assert prob[1] == pytest.approx(exact_b, abs=0.01) and prob[0] == pytest.approx(1 - exact_b, abs=0.01)
    # E[max − θ_A] = E[(θ_B − θ_A)+] = E[θ_B]·P(Beta(54,49) > θ_A) − E[θ_A]·P(θ_B > Beta(42,61)).
    exact_loss_a = 53 / 102 * _p_b_beats_a(41, 61, 54, 49) - 41 / 102 * _p_b_beats_a(42, 61, 53, 49)
    exact_loss_b = exact_loss_a - (53 / 102 - 41 / 102)  # E[max] − E[θ_B] = loss_A + E[θ_A] − E[θ_B]
    assert loss[0] == pytest.approx(exact_loss_a, abs=0.002)
    assert loss[1] == pytest.approx(exact_loss_b, abs=0.002)
    assert experiments.bayes([40, 52], [100, 100]) == (prob, loss)  # fixed seed: same figures
    three, _ = experiments.bayes([5, 5, 5], [10, 10, 10])
    assert sum(three) == pytest.approx(1) and all(abs(p - 1 / 3) < 0.02 for p in three)


def test_a_winner_needs_30_matured_cases_and_an_always_valid_interval_above_0() -> None:
    arm = experiments.ArmCounts
    few = experiments.results([arm("a", cases=30, matured=12, recoveries=2),
                               arm("b", cases=32, matured=29, recoveries=25)])
    assert few.winner is None and few.decision == "collecting"
    assert few.decision_reason.startswith("Needs 30 matured cases in every variant before any decision; "
                                          "the smallest has 12.")
    assert f"About {few.cases_needed_per_variant - 12} more matured cases per variant to detect +10 pts" \
        in few.decision_reason
    # 50% vs 52%: collecting, and it says how many matured cases a +10 pts gap needs.
    close = experiments.results([arm("a", cases=200, matured=200, recoveries=100),
                                 arm("b", cases=200, matured=200, recoveries=104)])
    assert close.winner is None and close.decision == "collecting"
    assert close.decision_reason.startswith("No variant is ahead beyond chance yet")
    assert close.cases_needed_per_variant is not None and close.cases_needed_per_variant > 200
    # The old rule named b at prob_best 0.99 here; the always-valid interval does not (yet).
    early = experiments.results([arm("a", cases=60, matured=60, recoveries=18),
                                 arm("b", cases=60, matured=60, recoveries=30)])
    assert early.variants[1].prob_best is not None and early.variants[1].prob_best > 0.95
    assert early.winner is None and early.decision == "collecting"
    clear = experiments.results([arm("a", cases=210, sends=400, clicks=50, messaged=200, matured=200,
                                     recoveries=60),
                                 arm("b", cases=205, matured=200, recoveries=120)])
    assert clear.winner == "b" and clear.decision == "winner"
    assert clear.decision_reason.startswith("b recovers more than every other variant")
    assert clear.winner_reason == clear.decision_reason
    a = clear.variants[0]
    assert (a.ctr, a.recovery_rate) == (0.25, 0.3) and a.prob_best is not None and a.prob_best < 0.01
    # The same data once stopped still names b; a stopped one without a winner says so.
    assert experiments.results(
        [arm("a", cases=210, matured=200, recoveries=60), arm("b", cases=205, matured=200, recoveries=120)],
        running=False).decision == "winner"
    stopped = experiments.results([arm("a", cases=200, matured=200, recoveries=100),
                                   arm("b", cases=200, matured=200, recoveries=104)], running=False)
    assert (stopped.decision, stopped.winner) == ("no_winner", None)
    assert stopped.decision_reason.startswith("Stopped before the data named a winner.")
    assert "No winner yet" not in stopped.decision_reason


def test_an_empty_experiment_shows_no_chance_of_being_best() -> None:
    arm = experiments.ArmCounts
    empty = experiments.results([arm("a"), arm("b")])
    assert [(v.prob_best, v.expected_loss) for v in empty.variants] == [(None, None), (None, None)]
    one_sided = experiments.results([arm("a", cases=5, matured=5, recoveries=2), arm("b", cases=4)])
    assert [v.prob_best for v in one_sided.variants] == [None, None]
    # A zero-weight variant that never got a case is not compared (nor does it hide the figures).
    zero = experiments.results([arm("a", cases=40, matured=40, recoveries=10, weight=1),
                                arm("b", weight=0), arm("c", cases=41, matured=41, recoveries=12, weight=1)])
    assert zero.variants[1].prob_best is None and zero.variants[0].prob_best is not None


def test_a_broken_split_is_a_sample_ratio_mismatch_and_names_no_winner() -> None:
    arm = experiments.ArmCounts
    skewed = experiments.results([arm("a", cases=500, matured=400, recoveries=80),
                                  arm("b", cases=400, matured=330, recoveries=200)])
    assert skewed.decision == "sample_ratio_mismatch" and skewed.winner is None
    assert skewed.srm_p_value is not None and skewed.srm_p_value < 0.001
    assert "not split as the weights say" in skewed.decision_reason
    # The same counts under weights 5:4 are the split asked for: b wins.
    weighted = experiments.results([arm("a", cases=500, matured=400, recoveries=80, weight=5),
                                    arm("b", cases=400, matured=330, recoveries=200, weight=4)])
    assert weighted.decision == "winner" and weighted.srm_p_value == pytest.approx(1.0)
    leak = experiments.results([arm("a", cases=50, weight=1), arm("b", cases=3, weight=0)])
    assert leak.decision == "sample_ratio_mismatch" and leak.srm_p_value == 0.0


def test_kaplan_meier_on_a_hand_checked_example() -> None:
    obs = [lift.Observation(0.5, True), lift.Observation(1.5, False),  # open, 1.5 days old
           lift.Observation(2.5, True), lift.Observation(2.5, True), lift.Observation(5.0, False),
           lift.Observation(14.0, False)]  # expired
    # t=0.5: 6 at risk, 1 recovers → S = 5/6. 1.5: censored (4 left). t=2.5: 2 of 4 → S = 5/6·2/4.
    curve = lift.kaplan_meier(obs)
    assert len(curve) == 15
    assert curve[0] == 0
    assert curve[1] == curve[2] == pytest.approx(1 / 6, abs=1e-6)
    assert all(v == pytest.approx(1 - 5 / 12, abs=1e-6) for v in curve[3:])
    # Mapping cases: open → censored at its age; expired/cancelled → no recovery through day 14.
    assert lift.observation(3.2, "open", None) == lift.Observation(3.2, False)
    assert lift.observation(30, "open", None) == lift.Observation(14, False)
    assert lift.observation(20, "cancelled", None) == lift.Observation(14, False)
    assert lift.observation(20, "recovered", 1.25) == lift.Observation(1.25, True)


def test_a_cohort_is_maturing_until_its_newest_case_is_14_days_old() -> None:
    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    old = CaseTimes(first_failure_at=now - timedelta(days=15), status="expired")
    young = CaseTimes(first_failure_at=now - timedelta(days=13), status="open")
    tz = ZoneInfo("UTC")
    only_old = cohorts([old], now, tz, 4)
    week = next(c for c in only_old.cohorts if c.cases)
    assert week.week == "2026-W47" and week.maturing is False
    both = next(c for c in cohorts([old, young], now, tz, 4).cohorts if c.cases)
    assert both.cases == 2 and both.maturing is True
    # The company's time zone decides the week: Monday 00:30 in Berlin is Sunday 23:30 UTC.
    edge = datetime(2026, 11, 29, 23, 30, tzinfo=UTC)
    in_berlin = cohorts([CaseTimes(first_failure_at=edge, status="open")], now, ZoneInfo("Europe/Berlin"), 4)
    in_utc = cohorts([CaseTimes(first_failure_at=edge, status="open")], now, tz, 4)
    assert [c.week for c in in_berlin.cohorts if c.cases] == ["2026-W49"]
    assert [c.week for c in in_utc.cohorts if c.cases] == ["2026-W48"]


# --- the experiments API --------------------------------------------------------------------------

VARIANTS = [{"name": "control", "weight": 1},
            {"name": "short", "weight": 1, "push_title": "{product}: payment failed",
             "push_body": "Fix it in a minute: {link}",
             "dm_body": "Quick fix for {product} ({amount}): {link}"}]


def test_create_list_get_stop_and_one_running_at_a_time(api: Api) -> None:
    _, created = api.call("POST", EXPS, body={"name": "Short copy", "variants": VARIANTS}, status=201)
    assert created["status"] == "running" and created["stopped_at"] is None
    assert [v["name"] for v in created["results"]] == ["control", "short"]
    assert created["winner"] is None and created["decision"] == "collecting"
    assert created["winner_reason"].startswith("Needs 30 matured cases in every variant before any decision")
    assert [v["prob_best"] for v in created["results"]] == [None, None]  # nothing to describe yet
    _, err = api.call("POST", EXPS, body={"name": "Another", "variants": VARIANTS}, status=409)
    assert "already running" in err["error"]["message"]
    _, stopped = api.call("POST", STOP, params={"experiment_id": created["id"]}, status=200)
    assert stopped["status"] == "stopped" and stopped["stopped_at"] is not None
    assert stopped["decision"] == "no_winner" and "No winner yet" not in stopped["decision_reason"]
    _, again = api.call("POST", STOP, params={"experiment_id": created["id"]}, status=200)
    assert again == stopped  # stopping twice changes nothing
    _, second = api.call("POST", EXPS, body={"name": "Second", "variants": VARIANTS}, status=201)
    _, listing = api.call("GET", EXPS, status=200)
    assert [e["id"] for e in listing["items"]] == [second["id"], created["id"]]  # history kept
    _, one = api.call("GET", EXP, params={"experiment_id": created["id"]}, status=200)
    assert one["variants"][1]["dm_body"] == VARIANTS[1]["dm_body"] and one["name"] == "Short copy"
    api.call("GET", EXP, params={"experiment_id": str(uuid.uuid4())}, status=404)
    _, bad = api.call("GET", EXP, params={"experiment_id": "not-a-uuid"}, status=400)
    assert "experiment_id" in bad["error"]["fields"]


BAD_EXPERIMENTS: list[tuple[str, dict[str, Any], str]] = [
    ("one variant", {"name": "x", "variants": VARIANTS[:1]}, "variants"),
    ("five variants", {"name": "x", "variants": [{"name": f"v{i}", "weight": 1} for i in range(5)]},
     "variants"),
    ("weights sum to 0", {"name": "x", "variants": [{"name": "a", "weight": 0}, {"name": "b", "weight": 0}]},
     "variants"),
    ("float weight", {"name": "x", "variants": [{"name": "a", "weight": 1.5}, VARIANTS[0]]},
     "variants.0.weight"),
    ("duplicate names", {"name": "x", "variants": [VARIANTS[0], VARIANTS[0]]}, "variants"),
    ("dm without link", {"name": "x", "variants": [VARIANTS[0],
                                                   {"name": "b", "weight": 1, "dm_body": "Pay"}]},
     "variants.1.dm_body"),
    ("unknown placeholder", {"name": "x", "variants": [VARIANTS[0], {"name": "b", "weight": 1,
                                                                     "push_body": "{link} {email}"}]},
     "variants.1.push_body"),
    ("long dm", {"name": "x", "variants": [VARIANTS[0], {"name": "b", "weight": 1,
                                                         "dm_body": "{link}" + "x" * 1500}]},
     "variants.1.dm_body"),
    ("two-line title", {"name": "x", "variants": [VARIANTS[0], {"name": "b", "weight": 1,
                                                                "push_title": "a\nb"}]},
     "variants.1.push_title"),
    ("unknown field", {"name": "x", "variants": VARIANTS, "status": "stopped"}, "status"),
    ("markup name", {"name": "x", "variants": [VARIANTS[0], {"name": "<b>", "weight": 1}]},
     "variants.1.name"),
    ("nul in name", {"name": "a\x00b", "variants": VARIANTS}, "name"),
]


@pytest.mark.parametrize(("label", "body", "field"), BAD_EXPERIMENTS, ids=[b[0] for b in BAD_EXPERIMENTS])
def test_an_invalid_experiment_is_400_naming_the_field(api: Api, label: str, body: dict[str, Any],
                                                       field: str) -> None:
    _, err = api.call("POST", EXPS, body=body, status=400)
    assert field in err["error"]["fields"], err
    assert api.rows(ALPHA, "SELECT count(*) AS n FROM experiments")[0]["n"] == 0


def test_two_creates_at_once_start_one_experiment(api: Api) -> None:
    def create() -> str:
        with tenant_transaction(ALPHA, api.db) as tx:
            try:
                measurement.create_experiment(tx, ALPHA, "race", VARIANTS)
                return "created"
            except measurement.ExperimentRunning:
                return "conflict"

    assert sorted(run_concurrently(create, 4, after=api.db.close)) == ["conflict"] * 3 + ["created"]


def test_other_companies_cannot_see_or_stop_an_experiment(api: Api) -> None:
    _, mine = api.call("POST", EXPS, body={"name": "mine", "variants": VARIANTS}, status=201)
    b = {"company_id": BRAVO, "experiment_id": mine["id"]}
    for method, template in (("GET", EXP), ("POST", STOP)):
        resp, err = api.call(method, template, params=b, user=ADMIN_B, status=404)
        assert err["error"]["message"] == "experiment not found" and "mine" not in resp.body.decode()
    _, theirs = api.call("GET", EXPS, params={"company_id": BRAVO}, user=ADMIN_B, status=200)
    assert theirs["items"] == []
    # One running experiment per company, not per installation.
    api.call("POST", EXPS, params={"company_id": BRAVO}, user=ADMIN_B,
             body={"name": "b", "variants": VARIANTS}, status=201)
    assert api.rows(ALPHA, "SELECT status FROM experiments") == [{"status": "running"}]
    api.open_case(company=ALPHA, membership="mem_a1")
    api.open_case(company=BRAVO, membership="mem_b1", user="user_b")
    _, b_cohorts = api.call("GET", COHORTS, params={"company_id": BRAVO}, user=ADMIN_B, status=200)
    assert sum(c["cases"] for c in b_cohorts["cohorts"]) == 1


# --- variant copy and the holdout, end to end -------------------------------------------------------


def _run(api: Api, at: datetime) -> None:
    ctx = effects.default_context()
    effects.execute_owed(ctx, ALPHA, at, api.db)


def test_the_variant_copy_is_what_whop_receives_on_every_message(api: Api) -> None:
    # All the weight on "short": every new case gets it, so the test is deterministic.
    body = {"name": "short only", "variants": [{**VARIANTS[0], "weight": 0}, VARIANTS[1]]}
    _, exp = api.call("POST", EXPS, body=body, status=201)
    api.whop.add_membership("mem_1", company_id=ALPHA, user_id="user_1", product_title="Alpha *Pro*")
    at = NOW - timedelta(hours=1)
    case_id = api.open_case(at=at)
    row = api.case(case_id)
    assert (str(row["experiment_id"]), row["variant"], row["holdout"]) == (exp["id"], "short", False)
    _run(api, NOW)
    link = f"{effects.default_context().public_base_url}/r/{row['link_token']}"
    dm = api.whop.calls_to("POST", "/messages")[-1].json["content"]
    push = api.whop.calls_to("POST", "/notifications")[-1].json
    assert dm == f"Quick fix for Alpha \\*Pro\\* ($19.99): {link}"
    assert (push["title"], push["content"]) == ("Alpha *Pro*: payment failed", f"Fix it in a minute: {link}")
    # A manual nudge keeps the variant.
    api.call("POST", NUDGE, params={"case_id": case_id}, status=200)
    assert api.whop.calls_to("POST", "/messages")[-1].json["content"] == dm
    # Stopping the experiment keeps the case's variant (and its copy) for later messages.
    api.call("POST", STOP, params={"experiment_id": exp["id"]}, status=200)
    assert api.case(case_id)["variant"] == "short"
    _, detail = api.call("GET", ONE, params={"case_id": case_id}, status=200)
    assert (detail["experiment_id"], detail["variant"], detail["decline_class"]) == (exp["id"], "short",
                                                                                     "card_soft")
    _, shown = api.call("GET", EXP, params={"experiment_id": exp["id"]}, status=200)
    short = next(v for v in shown["results"] if v["name"] == "short")
    assert (short["cases"], short["sends"], short["clicks"], short["ctr"]) == (1, 4, 0, 0.0)
    assert len(api.whop.calls_to("GET", r"/memberships/mem_1$")) == 1  # the product name, read once


def test_holdout_cases_reach_whop_only_by_a_creators_manual_nudge(api: Api) -> None:
    # (smart retry off: its payday retry is a skipped row too, tested in tests/test_smart_retry.py)
    api.call("PUT", SETTINGS, body={"holdout_percent": 50, "incentive_days": 3, "smart_retry": False},
             status=200)
    at = NOW - DAY
    cases = {}
    for i in range(24):
        api.whop.add_membership(f"mem_{i}", company_id=ALPHA, user_id=f"user_{i}")
        cases[f"user_{i}"] = api.open_case(membership=f"mem_{i}", user=f"user_{i}", at=at)
    held = {u for u, c in cases.items() if api.case(c)["holdout"]}
    assert 0 < len(held) < len(cases)  # ~50% of 24 (P(all or none) ≈ 1e-7)
    assert all(api.case(cases[u])["variant"] is None for u in held)
    _run(api, NOW)  # T+0 nudges and incentives
    scheduler.tick(effects.default_context(), NOW + 2 * DAY + timedelta(minutes=1), api.db)  # day-3 reminder
    reached = {uid for c in api.whop.calls_to("POST", "/dm_channels") for uid in c.json["with_user_ids"]}
    reached |= {uid for c in api.whop.calls_to("POST", "/notifications") for uid in c.json["user_ids"]}
    extended = {c.api_path.split("/")[2] for c in api.whop.calls_to("POST", r"/memberships/.*/extend")}
    assert reached == set(cases) - held
    assert extended == {f"mem_{u[5:]}" for u in set(cases) - held}
    one = sorted(held)[0]
    rows = api.rows(ALPHA, "SELECT kind, status, error_detail FROM recovery_actions"
                           " WHERE case_id = CAST(:c AS uuid) AND kind <> 'link_click'", c=cases[one])
    assert {(r["kind"], r["status"], r["error_detail"]) for r in rows} == {
        ("nudge", "skipped", "holdout"), ("incentive", "skipped", "holdout"),
        ("reminder", "skipped", "holdout")}
    _, detail = api.call("GET", ONE, params={"case_id": cases[one]}, status=200)
    assert detail["holdout"] is True
    assert {t["detail"].get("error") for t in detail["timeline"] if t["source"] == "action"} == {"holdout"}
    # A creator's manual nudge is their choice: it goes.
    api.call("POST", NUDGE, params={"case_id": cases[one]}, status=200)
    assert one in {uid for c in api.whop.calls_to("POST", "/dm_channels") for uid in c.json["with_user_ids"]}


def test_an_authentication_failure_gets_the_bank_copy_and_the_recovery_url(api: Api) -> None:
    from chalicelib.links import follow

    at = NOW - timedelta(hours=2)
    msg_id, body = payment_event("payment.requires_action", membership="mem_3ds", at=at,
                                 recovery_url="https://whop.com/checkout/3ds/pay_9", decline_code=None,
                                 failure_message=None)
    api.whop.add_membership("mem_3ds", company_id=ALPHA, user_id="user_1")
    case_id = api.deliver(msg_id, body, at).opened_case_ids[0]
    assert api.case(case_id)["decline_class"] == "authentication"
    _run(api, NOW)
    dm = api.whop.calls_to("POST", "/messages")[-1].json["content"]
    assert "**[Confirm with your bank](" in dm
    click = follow(api.case(case_id)["link_token"], NOW, get_whop(), api.db)
    assert click.location == "https://whop.com/checkout/3ds/pay_9"


# --- KPIs, lift and cohorts, recomputed from the CSV export ---------------------------------------


def _seed_measured(api: Api) -> None:
    """A seeded example: 120 matured treated cases, 40 matured holdout cases, a few young ones."""
    rng = random.Random(1010)
    classes = ["card_soft", "card_soft", "card_hard", "authentication", "unknown"]
    for i in range(160):
        holdout = i >= 120
        recovered = rng.random() < (0.30 if holdout else 0.52)
        first = NOW - timedelta(days=16 + rng.randrange(12), hours=rng.randrange(24))
        cls = classes[i % len(classes)]
        status = "recovered" if recovered else rng.choice(["expired", "expired", "cancelled"])
        currency = "eur" if i % 10 == 0 else "usd"
        incentive = 0 if holdout or i % 4 else 200
        insert_case(api, status=status, first=first, holdout=holdout, decline_class=cls, currency=currency,
                    incentive_days=3 if incentive else 0, incentive_cost_minor=incentive or None,
                    recovered_at=first + timedelta(days=rng.randrange(14), hours=3) if recovered else None,
                    recovered_amount_minor=1999 if recovered else None)
    for i in range(6):  # young and open: not matured, left out of the lift
        insert_case(api, first=NOW - timedelta(days=2 + i), holdout=i % 2 == 0, decline_class="card_soft")


def _lift_from_csv(rows: list[dict[str, str]], now: datetime = NOW) -> dict[str, Any]:
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    matured = [r for r in rows if at(r["first_failure_at"]) + timedelta(days=14) <= now
               and at(r["opened_at"]) <= at(r["first_failure_at"]) + timedelta(days=14)
               and int(r["holdout_percent_at_open"] or 0) > 0]
    arms = {flag: [r for r in matured if r["holdout"] == flag] for flag in ("true", "false")}
    t, h = arms["false"], arms["true"]
    t_rec = sum(r["status"] == "recovered" for r in t)
    h_rec = sum(r["status"] == "recovered" for r in h)
    revenue: dict[str, dict[str, int]] = {"t": {}, "h": {}}
    for key, arm in (("t", t), ("h", h)):
        for r in arm:
            if r["status"] == "recovered":
                amount = int(r["recovered_amount_minor"])
                revenue[key][r["currency"]] = revenue[key].get(r["currency"], 0) + amount
    currencies = sorted(set(revenue["t"]) | set(revenue["h"]))
    incremental = [{"currency": c, "amount_minor": round(revenue["t"].get(c, 0)
                                                         - revenue["h"].get(c, 0) * len(t) / len(h))}
                   for c in currencies]
    low, high = lift.newcombe(t_rec, len(t), h_rec, len(h))
    return {"treated_cases": len(t), "holdout_cases": len(h), "treated_rate": t_rec / len(t),
            "holdout_rate": h_rec / len(h), "incremental_rate": t_rec / len(t) - h_rec / len(h),
            "interval": [low, high], "incremental_revenue": incremental}


def test_kpis_lift_and_cohorts_recomputed_from_the_csv_export(api: Api) -> None:
    _seed_measured(api)
    _, kpis = api.call("GET", KPIS, query="window_days=30", status=200)
    _, text = api.call("GET", EXPORT, query="window_days=30", status=200)
    rows = parse_csv(text)
    assert len(rows) == kpis["total_cases"] == 166
    got = kpis["lift"]
    assert got["status"] == "ok"
    expected = _lift_from_csv(rows)
    for name in ("treated_cases", "holdout_cases", "incremental_revenue"):
        assert got[name] == expected[name], name
    for name in ("treated_rate", "holdout_rate", "incremental_rate"):
        assert got[name] == pytest.approx(expected[name]), name
    assert got["interval"] == pytest.approx(expected["interval"])
    assert got["interval"][0] < got["incremental_rate"] < got["interval"][1]
    # By decline class, from the CSV's decline_class column.
    for cls, figures in kpis["by_decline_class"].items():
        mine = [r for r in rows if r["decline_class"] == cls]
        assert figures["cases"] == len(mine)
        assert figures["recoveries"] == sum(r["status"] == "recovered" for r in mine)
    # Incentive cost: 200 per treated case with i % 4 == 0 (30 of them, 6 in eur).
    assert kpis["incentive_cost"] == [{"currency": "eur", "amount_minor": 1200},
                                      {"currency": "usd", "amount_minor": 4800}]
    net = {m["currency"]: m["amount_minor"] for m in got["net_incremental_revenue"]}
    inc = {m["currency"]: m["amount_minor"] for m in got["incremental_revenue"]}
    assert net == {"eur": inc["eur"] - 1200, "usd": inc["usd"] - 4800}
    # Cohorts (UTC company) from the same rows: counts per ISO week of first_failure_at.
    _, weekly = api.call("GET", COHORTS, query="weeks=8", status=200)
    by_week: dict[str, Counter[str]] = {}
    for r in rows:
        day = datetime.fromisoformat(r["first_failure_at"].replace("Z", "+00:00")).date().isocalendar()
        by_week.setdefault(f"{day.year}-W{day.week:02d}", Counter())[r["status"]] += 1
    shown = {c["week"]: c for c in weekly["cohorts"] if c["cases"]}
    assert set(shown) == set(by_week)
    for week, counts in by_week.items():
        c = shown[week]
        assert (c["cases"], c["recovered"], c["expired"], c["cancelled"], c["open"]) == (
            sum(counts.values()), counts["recovered"], counts["expired"], counts["cancelled"], counts["open"])
    assert len(weekly["cohorts"]) == 8 and weekly["curve_cases"] == 166
    curve = [p["recovered_share"] for p in weekly["time_to_recovery"]]
    assert curve == sorted(curve) and 0 < curve[14] < 1


def test_lift_is_withheld_until_each_arm_has_30_matured_cases(api: Api) -> None:
    for i in range(35):
        insert_case(api, status="expired", first=NOW - 20 * DAY, holdout=i < 29)
    _, kpis = api.call("GET", KPIS, status=200)
    assert kpis["lift"] == {"status": "insufficient_data", "treated_cases": 6, "holdout_cases": 29,
                            "treated_rate": None, "holdout_rate": None, "incremental_rate": None,
                            "interval": None, "incremental_revenue": [], "net_incremental_revenue": [],
                            "incremental_revenue_interval": None, "net_incremental_revenue_interval": None,
                            "contaminated_cases": 0, "maturing_cases": 0, "maturing_recoveries": 0,
                            "not_eligible_cases": 0}
    assert kpis["previous"]["lift"]["status"] == "insufficient_data"
    assert kpis["previous"]["window_days"] == kpis["window_days"] == 30


def test_experiment_results_count_each_variant(api: Api) -> None:
    exp_id = api.add_experiment(status="stopped")
    for i in range(12):
        case = insert_case(api, status="recovered" if i < 8 else "expired", first=NOW - 20 * DAY,
                           experiment_id=exp_id, variant="a", link_clicks=1 if i < 3 else 0)
        if i < 5:
            api.rows(ALPHA, "INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status,"
                            " idempotency_key)"
                            " VALUES (CAST(:c AS uuid), :co, 'nudge', 't0', 'dm', 'sent', :k)"
                            " RETURNING id", c=case, co=ALPHA, k=str(uuid.uuid4()))
    for _ in range(3):
        insert_case(api, first=NOW - 2 * DAY, experiment_id=exp_id, variant="b")  # young, open
    _, shown = api.call("GET", EXP, params={"experiment_id": exp_id}, status=200)
    a, b = shown["results"]
    assert (a["cases"], a["sends"], a["clicks"], a["matured_cases"], a["recoveries"]) == (12, 5, 3, 12, 8)
    assert a["ctr"] == pytest.approx(3 / 5) and a["recovery_rate"] == pytest.approx(8 / 12)
    assert (b["cases"], b["matured_cases"], b["recovery_rate"], b["ctr"]) == (3, 0, None, None)
    assert (b["maturing_cases"], b["maturing_recoveries"]) == (3, 0)
    assert a["prob_best"] is None and b["prob_best"] is None  # b has nothing matured to compare
    assert shown["winner"] is None and shown["decision"] == "no_winner"  # stopped
    assert shown["winner_reason"].startswith("Stopped before the data named a winner. Needs 30 matured")
    _, text = api.call("GET", EXPORT, status=200)
    by_variant = Counter(r["variant"] for r in parse_csv(text) if r["experiment_id"] == exp_id)
    assert by_variant == {"a": 12, "b": 3}


def test_settings_holdout_percent_round_trips(api: Api) -> None:
    _, stored = api.call("PUT", SETTINGS, body={"holdout_percent": 25}, status=200)
    assert stored["holdout_percent"] == 25
    assert api.rows(ALPHA, "SELECT holdout_percent FROM creator_settings") == [{"holdout_percent": 25}]
    _, err = api.call("PUT", SETTINGS, body={"holdout_percent": 51}, status=400)
    assert "holdout_percent" in err["error"]["fields"]


def test_cohort_weeks_are_validated(api: Api) -> None:
    for bad in ("0", "53", "x"):
        _, err = api.call("GET", COHORTS, query=f"weeks={bad}", status=400)
        assert "weeks" in err["error"]["fields"]
    _, body = api.call("GET", COHORTS, status=200)
    assert body["weeks"] == 12 and len(body["cohorts"]) == 12 and body["curve_cases"] == 0
    assert [p["day"] for p in body["time_to_recovery"]] == list(range(15))


def test_the_product_name_comes_from_the_membership_or_falls_back() -> None:
    from chalicelib.whop_mapping import membership_from_json

    assert membership_from_json({"id": "m", "product": {"id": "p", "title": " Pro "}}).product_title == "Pro"
    legacy = membership_from_json({"id": "m", "product": {"id": "p", "name": "Legacy"}})
    assert legacy.product_title == "Legacy"
    for product in (None, {"title": "  "}, {"title": 7}, "prod_1"):
        assert membership_from_json({"id": "m", "product": product}).product_title is None
    assert messages.product_label(None) == messages.product_label("  \n ") == "your membership"


def test_a_failed_product_read_falls_back_and_is_remembered_only_briefly(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(measurement, "_clock", lambda: clock[0])
    api.whop.add_membership("mem_p", company_id=ALPHA, user_id="user_1", product_title="Gold")
    api.whop.inject("GET", r"/memberships/mem_p$", "500", times=None)
    assert measurement.product_name(get_whop(), "mem_p") is None
    asked = len(api.whop.calls_to("GET", "/memberships/mem_p"))
    api.whop.clear_faults()
    # The next messages of the same batch do not ask Whop again for the same failure…
    assert measurement.product_name(get_whop(), "mem_p") is None
    assert len(api.whop.calls_to("GET", "/memberships/mem_p")) == asked
    # …a minute later they do.
    clock[0] += measurement.FAILED_PRODUCT_CACHE_S + 1
    assert measurement.product_name(get_whop(), "mem_p") == "Gold"
    api.whop.inject("GET", r"/memberships/mem_p$", "500", times=None)
    assert measurement.product_name(get_whop(), "mem_p") == "Gold"  # cached now


def test_a_case_keeps_its_arm_and_variant_through_later_events_and_new_experiments(api: Api) -> None:
    body = {"name": "all b", "variants": [{"name": "a", "weight": 0}, {"name": "b", "weight": 3}]}
    _, first = api.call("POST", EXPS, body=body, status=201)
    at = NOW - 3 * DAY
    msg_id, raw = payment_event("payment.failed", membership="mem_k", at=at, decline_code="expired_card")
    case_id = api.deliver(msg_id, raw, at).opened_case_ids[0]
    api.call("POST", STOP, params={"experiment_id": first["id"]}, status=200)
    flipped = [{"name": "a", "weight": 1}, {"name": "b", "weight": 0}]
    api.call("POST", EXPS, body={"name": "all a", "variants": flipped}, status=201)
    api.call("PUT", SETTINGS, body={"holdout_percent": 50}, status=200)
    assert api.deliver(msg_id, raw, at).status == "duplicate"  # redelivery
    again_id, again = payment_event("payment.failed", membership="mem_k", at=at + DAY, decline_code=None,
                                    failure_message=None)
    assert api.deliver(again_id, again, at + DAY).opened_case_ids == []  # merged into the same case
    row = api.case(case_id)
    assert (str(row["experiment_id"]), row["variant"], row["holdout"]) == (first["id"], "b", False)
    assert (row["failure_count"], row["decline_class"]) == (2, "card_hard")
