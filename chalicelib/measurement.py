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
from chalicelib.models import RECOVERY_WINDOW, Case, CreatorSettings
from chalicelib.whop import WhopError, WhopPort

MESSAGE_KINDS = ("nudge", "reminder", "manual_nudge")
MAX_LISTED = 50


class ExperimentRunning(Exception):
    """The company already runs an experiment (the partial unique index said so)."""


# --- assignment (processing: once, when a case row is inserted) ------------------------------------


def assign_new_case(tx: Transaction, case_id: str, settings: CreatorSettings) -> None:
    """Put a new case in the holdout or, when an experiment runs, in one of its variants."""
    if experiments.in_holdout(case_id, settings.holdout_percent):
        tx.execute("UPDATE recovery_cases SET holdout = true WHERE id = CAST(:id AS uuid)", id=case_id)
        return
    running = tx.one("SELECT id::text AS id, variants FROM experiments WHERE status = 'running'")
    if running is None:
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
_PRODUCT_CACHE_MAX = 5000
_products: dict[str, tuple[str | None, float]] = {}
_products_lock = threading.Lock()


def product_name(whop: WhopPort, membership_id: str) -> str | None:
    """The Whop product's name for a membership, read once and cached (None when Whop cannot
    tell: the copy then says "your membership"; a failed read is not cached)."""
    with _products_lock:
        cached = _products.get(membership_id)
        if cached and cached[1] > time.monotonic():
            return cached[0]
    try:
        name = whop.retrieve_membership(membership_id).product_title
    except WhopError:
        return None
    with _products_lock:
        if len(_products) >= _PRODUCT_CACHE_MAX:
            _products.clear()
        _products[membership_id] = (name, time.monotonic() + PRODUCT_CACHE_S)
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


def variant_counts(tx: Transaction, experiment_id: str, now: datetime) -> dict[str, experiments.ArmCounts]:
    """Per variant: cases, sends, clicked and messaged cases, matured cases and their recoveries."""
    rows = tx.query(
        "SELECT c.variant, count(*) AS cases, COALESCE(sum(s.sent), 0) AS sends,"
        " count(*) FILTER (WHERE c.link_clicks > 0) AS clicks,"
        " count(*) FILTER (WHERE s.sent > 0) AS messaged,"
        " count(*) FILTER (WHERE c.status <> 'open' OR c.first_failure_at <= :mature) AS matured,"
        " count(*) FILTER (WHERE c.status = 'recovered') AS recoveries"
        " FROM recovery_cases c LEFT JOIN LATERAL (SELECT count(*) AS sent FROM recovery_actions a"
        "   WHERE a.case_id = c.id AND a.status = 'sent'"
        "   AND a.kind IN ('nudge', 'reminder', 'manual_nudge')) s ON true"
        " WHERE c.experiment_id = CAST(:id AS uuid) GROUP BY c.variant",
        id=experiment_id, mature=now - RECOVERY_WINDOW)
    return {r["variant"]: experiments.ArmCounts(
        name=r["variant"], cases=int(r["cases"]), sends=int(r["sends"]), clicks=int(r["clicks"]),
        messaged=int(r["messaged"]), matured=int(r["matured"]), recoveries=int(r["recoveries"]))
        for r in rows}


# --- KPIs and cohorts ------------------------------------------------------------------------------


# The KPI route's one query (make bench times the route against this SQL run bare).
KPI_GROUPS_SQL = (
    "SELECT first_failure_at >= :mid AS current, status,"
    " COALESCE(currency, recovered_currency) AS currency, decline_class, holdout,"
    " (status <> 'open' OR first_failure_at <= :mature) AS matured, count(*) AS cases,"
    " COALESCE(sum(recovered_amount_minor) FILTER (WHERE status = 'recovered'), 0) AS recovered,"
    " COALESCE(sum(incentive_cost_minor), 0) AS incentive_cost,"
    # issue 18: the recovery's credit (by_recovery_source); recovered before 0013 = other
    " CASE WHEN status = 'recovered' THEN COALESCE(recovered_by, 'other') END AS recovered_by"
    " FROM recovery_cases WHERE first_failure_at >= :start AND first_failure_at <= :now"
    " GROUP BY 1, 2, 3, 4, 5, 6, 10"
)


def kpi_group_params(now: datetime, window: timedelta) -> dict[str, datetime]:
    return {"mid": now - window, "start": now - 2 * window, "now": now, "mature": now - RECOVERY_WINDOW}


def kpi_groups(tx: Transaction, *, now: datetime,
               window: timedelta) -> tuple[list[StatusCount], list[StatusCount]]:
    """Case counts for [now - window, now] and the window before, grouped by everything the KPIs
    break down by (status, currency, decline class, holdout, matured)."""
    rows = tx.query(KPI_GROUPS_SQL, **kpi_group_params(now, window))
    current: list[StatusCount] = []
    previous: list[StatusCount] = []
    for row in rows:
        counted = StatusCount(status=row["status"], currency=row["currency"], cases=int(row["cases"]),
                              recovered_minor=int(row["recovered"]), decline_class=row["decline_class"],
                              holdout=bool(row["holdout"]), matured=bool(row["matured"]),
                              incentive_cost_minor=int(row["incentive_cost"]),
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
