"""Measurement's storage and hooks (issue 10): small named queries over ``experiments`` and the
case columns ``holdout``/``experiment_id``/``variant``/``decline_class``, the assignment made when
a case opens, and the copy a claimed message is sent with. Every function that takes a
``Transaction`` expects a tenant transaction (RLS scopes it to one company).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from chalicelib import experiments
from chalicelib.db import Transaction
from chalicelib.kpis import CaseTimes, StatusCount
from chalicelib.messages import Copy, VariantCopy, render
from chalicelib.models import Case, CreatorSettings
from chalicelib.whop import WhopError, WhopPort

MESSAGE_KINDS = ("nudge", "reminder", "manual_nudge")
MAX_LISTED = 50


class ExperimentRunning(Exception):
    """The company already runs an experiment (the partial unique index said so)."""


# --- assignment (processing: once, when a case row is inserted) ------------------------------------


def assign_new_case(tx: Transaction, case_id: str, settings: CreatorSettings) -> None:
    """Put a new case in the holdout or, when an experiment runs, in one of its variants, and
    record the holdout percent in force (the lift compares arms only over cases assigned while it
    was above 0). One statement unless a variant is written: it also reads the running experiment."""
    held = experiments.in_holdout(case_id, settings.holdout_percent)
    running = tx.one(
        "WITH u AS (UPDATE recovery_cases SET holdout = :held, holdout_percent_at_open = :pct"
        "  WHERE id = CAST(:id AS uuid) RETURNING id)"
        " SELECT (SELECT count(*) FROM u) AS updated, e.id::text AS id, e.variants"
        " FROM (SELECT 1) one LEFT JOIN experiments e ON e.status = 'running' AND NOT :held",
        held=held, pct=settings.holdout_percent, id=case_id)
    if running is None or running["id"] is None:
        return
    weights = [(v["name"], int(v["weight"])) for v in running["variants"]]
    variant = experiments.assign_variant(running["id"], case_id, weights)
    tx.execute("UPDATE recovery_cases SET experiment_id = CAST(:e AS uuid), variant = :v"
               " WHERE id = CAST(:id AS uuid)", e=running["id"], v=variant, id=case_id)


# --- copy of a claimed message (effects.perform) ---------------------------------------------------


def variant_copy(tx: Transaction, case: Case) -> VariantCopy | None:
    """The copy of the case's variant, if it has one (stopped experiments keep their copy for the
    cases already in them)."""
    if case.experiment_id is None or case.variant is None:
        return None
    row = tx.one("SELECT variants FROM experiments WHERE id = CAST(:id AS uuid)", id=case.experiment_id)
    if row is None:
        return None
    for v in row["variants"]:
        if v["name"] == case.variant:
            return VariantCopy(push_title=v.get("push_title"), push_body=v.get("push_body"),
                               dm_body=v.get("dm_body"))
    return None


PRODUCT_CACHE_S = 3600.0
FAILED_PRODUCT_CACHE_S = 60.0
_clock = time.monotonic  # replaced by tests
_PRODUCT_CACHE_MAX = 5000
_products: dict[str, tuple[str | None, float]] = {}
_products_lock = threading.Lock()


def product_name(whop: WhopPort, membership_id: str) -> str | None:
    """The Whop product's name for a membership, read once and cached (None when Whop cannot
    tell: the copy then says "your membership"). A failed read is remembered only briefly: long
    enough that a batch of one member's messages asks Whop once, not once per message (each ask
    can take a worst-case call's time out of a budget), short enough that the next send retries."""
    with _products_lock:
        cached = _products.get(membership_id)
        if cached and cached[1] > _clock():
            return cached[0]
    try:
        name, ttl = whop.retrieve_membership(membership_id).product_title, PRODUCT_CACHE_S
    except WhopError:
        name, ttl = None, FAILED_PRODUCT_CACHE_S
    with _products_lock:
        if len(_products) >= _PRODUCT_CACHE_MAX:
            _products.clear()
        _products[membership_id] = (name, _clock() + ttl)
    return name


def clear_product_cache() -> None:
    with _products_lock:
        _products.clear()


def message_copy(whop: WhopPort, template: str, case: Case, link: str, now: datetime,
                 variant: VariantCopy | None) -> Copy:
    """What a nudge, reminder or manual nudge says: the variant's copy or the default copy of the
    case's decline class, with the product's name filled in."""
    return render(template, case, link, now, product_name(whop, case.membership_id), variant)


# --- experiments -----------------------------------------------------------------------------------

_EXPERIMENT = ("id::text AS id, name, status, variants, created_at, stopped_at")


def create_experiment(tx: Transaction, company_id: str, name: str,
                      variants: list[dict[str, Any]]) -> dict[str, Any]:
    # The partial unique index decides races between two creates; ON CONFLICT keeps the
    # transaction usable so the caller can answer 409.
    row = tx.one(
        "INSERT INTO experiments (company_id, name, variants) VALUES (:c, :n, CAST(:v AS jsonb))"  # noqa: S608
        " ON CONFLICT (company_id) WHERE status = 'running' DO NOTHING RETURNING " + _EXPERIMENT,
        c=company_id, n=name, v=json.dumps(variants))
    if row is None:
        raise ExperimentRunning()
    return row


def list_experiments(tx: Transaction) -> list[dict[str, Any]]:
    return tx.query("SELECT " + _EXPERIMENT + " FROM experiments"  # noqa: S608 - constant columns
                    " ORDER BY created_at DESC, id DESC LIMIT :n", n=MAX_LISTED)


def get_experiment(tx: Transaction, experiment_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    return tx.one("SELECT " + _EXPERIMENT + " FROM experiments WHERE id = CAST(:id AS uuid)"  # noqa: S608
                  + (" FOR UPDATE" if lock else ""), id=experiment_id)


def stop_experiment(tx: Transaction, experiment_id: str, now: datetime) -> None:
    tx.execute("UPDATE experiments SET status = 'stopped', stopped_at = :now, updated_at = now()"
               " WHERE id = CAST(:id AS uuid) AND status = 'running'", id=experiment_id, now=now)


# Matured (lift.matured) and opened in time (lift.opened_in_time) as SQL over recovery_cases
# (``t`` is a table alias and its dot, or ""): the window is exactly 14 × 24 h in both. In hours,
# because '14 days' added to a timestamptz follows the session time zone's DST changes.
WINDOW_SQL = "interval '336 hours'"


def matured_sql(t: str = "") -> str:
    return f"{t}first_failure_at + {WINDOW_SQL} <= :now"


def in_time_sql(t: str = "") -> str:
    return f"{t}opened_at <= {t}first_failure_at + {WINDOW_SQL}"


def in_lift_sql(t: str = "") -> str:
    return f"({in_time_sql(t)} AND COALESCE({t}holdout_percent_at_open, 0) > 0)"


def variant_counts(tx: Transaction, experiment_id: str, now: datetime,
                   weights: dict[str, int] | None = None) -> dict[str, experiments.ArmCounts]:
    """Per variant: cases (all assigned: the sample-ratio check), sends, clicked and messaged
    cases, and over the cases opened in time, the matured ones and their recoveries and the
    maturing ones and theirs."""
    in_time, matured = in_time_sql("c."), matured_sql("c.")
    rows = tx.query(
        "SELECT c.variant, count(*) AS cases, COALESCE(sum(s.sent), 0) AS sends,"  # noqa: S608 - constants
        " count(*) FILTER (WHERE c.link_clicks > 0) AS clicks,"
        " count(*) FILTER (WHERE s.sent > 0) AS messaged,"
        f" count(*) FILTER (WHERE {in_time} AND {matured}) AS matured,"
        f" count(*) FILTER (WHERE {in_time} AND {matured} AND c.status = 'recovered') AS recoveries,"
        f" count(*) FILTER (WHERE {in_time} AND NOT ({matured})) AS maturing,"
        f" count(*) FILTER (WHERE {in_time} AND NOT ({matured}) AND c.status = 'recovered')"
        " AS maturing_recoveries"
        " FROM recovery_cases c LEFT JOIN LATERAL (SELECT count(*) AS sent FROM recovery_actions a"
        "   WHERE a.case_id = c.id AND a.status = 'sent'"
        "   AND a.kind IN ('nudge', 'reminder', 'manual_nudge')) s ON true"
        " WHERE c.experiment_id = CAST(:id AS uuid) GROUP BY c.variant",
        id=experiment_id, now=now)
    weights = weights or {}
    return {r["variant"]: experiments.ArmCounts(
        name=r["variant"], cases=int(r["cases"]), sends=int(r["sends"]), clicks=int(r["clicks"]),
        messaged=int(r["messaged"]), matured=int(r["matured"]), recoveries=int(r["recoveries"]),
        weight=weights.get(r["variant"], 1), maturing=int(r["maturing"]),
        maturing_recoveries=int(r["maturing_recoveries"])) for r in rows}


# --- KPIs and cohorts ------------------------------------------------------------------------------


# The KPI route's one query (make bench times the route against this SQL run bare).
KPI_GROUPS_SQL = (
    "SELECT first_failure_at >= :mid AS current, status,"  # noqa: S608 - constant fragments
    " COALESCE(currency, recovered_currency) AS currency, decline_class, holdout,"
    f" ({matured_sql()}) AS matured, {in_lift_sql()} AS in_lift, count(*) AS cases,"
    " COALESCE(sum(recovered_amount_minor) FILTER (WHERE status = 'recovered'), 0) AS recovered,"
    " COALESCE(sum(CAST(recovered_amount_minor AS numeric) ^ 2) FILTER (WHERE status = 'recovered'), 0)"
    " AS recovered_squares,"
    " COALESCE(sum(incentive_cost_minor), 0) AS incentive_cost,"
    " count(*) FILTER (WHERE contaminated) AS contaminated,"
    # The recovery's credit (by_recovery_source); recovered before 0013 = other
    " CASE WHEN status = 'recovered' THEN COALESCE(recovered_by, 'other') END AS recovered_by"
    " FROM recovery_cases WHERE first_failure_at >= :start AND first_failure_at <= :now"
    " GROUP BY 1, 2, 3, 4, 5, 6, 7, 13"
)


def kpi_group_params(now: datetime, window: timedelta) -> dict[str, datetime]:
    return {"mid": now - window, "start": now - 2 * window, "now": now}


def kpi_groups(tx: Transaction, *, now: datetime,
               window: timedelta) -> tuple[list[StatusCount], list[StatusCount]]:
    """Case counts for [now - window, now] and the window before, grouped by everything the KPIs
    break down by (status, currency, decline class, holdout, matured, eligible for the lift)."""
    rows = tx.query(KPI_GROUPS_SQL, **kpi_group_params(now, window))
    current: list[StatusCount] = []
    previous: list[StatusCount] = []
    for row in rows:
        counted = StatusCount(status=row["status"], currency=row["currency"], cases=int(row["cases"]),
                              recovered_minor=int(row["recovered"]), decline_class=row["decline_class"],
                              holdout=bool(row["holdout"]), matured=bool(row["matured"]),
                              incentive_cost_minor=int(row["incentive_cost"]), in_lift=bool(row["in_lift"]),
                              contaminated=int(row["contaminated"]),
                              recovered_squares=int(row["recovered_squares"]),
                              recovered_by=row["recovered_by"])
        (current if row["current"] else previous).append(counted)
    return current, previous


def cohort_cases(tx: Transaction, *, since: datetime, now: datetime) -> list[CaseTimes]:
    rows = tx.query(
        "SELECT first_failure_at, status, recovered_at, COALESCE(currency, recovered_currency) AS currency,"
        " COALESCE(recovered_amount_minor, 0) AS recovered, decline_class FROM recovery_cases"
        " WHERE first_failure_at >= :since AND first_failure_at <= :now", since=since, now=now)
    return [CaseTimes(first_failure_at=r["first_failure_at"], status=r["status"],
                      recovered_at=r["recovered_at"], currency=r["currency"],
                      recovered_minor=int(r["recovered"]) if r["status"] == "recovered" else 0,
                      decline_class=r["decline_class"]) for r in rows]
