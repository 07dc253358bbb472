"""``…/experiments``: copy experiments (create, list, one with its results, stop)."""

from __future__ import annotations

from typing import Any

from chalice.app import Response

from chalicelib import experiments as domain
from chalicelib import measurement
from chalicelib.api import CreatorContext
from chalicelib.api.cases import parse_uuid
from chalicelib.api.schemas.experiments import (
    Experiment,
    ExperimentCreate,
    ExperimentList,
    VariantBody,
    VariantResult,
)
from chalicelib.db import Transaction
from chalicelib.errors import Conflict, NotFound
from chalicelib.http import json_response
from chalicelib.tenancy import tenant_transaction


def _view(tx: Transaction, row: dict[str, Any], ctx: CreatorContext) -> Experiment:
    variants = [VariantBody.model_validate(v) for v in row["variants"]]
    weights = {v.name: v.weight for v in variants}
    counted = measurement.variant_counts(tx, row["id"], ctx.now, weights)
    arms = [counted.get(v.name, domain.ArmCounts(name=v.name, weight=v.weight)) for v in variants]
    result = domain.results(arms, running=row["status"] == "running")
    return Experiment(
        id=row["id"], name=row["name"], status=row["status"], variants=variants,
        created_at=row["created_at"], stopped_at=row["stopped_at"],
        results=[VariantResult.model_validate(r, from_attributes=True) for r in result.variants],
        winner=result.winner, winner_reason=result.winner_reason, decision=result.decision,
        decision_reason=result.decision_reason, cases_needed_per_variant=result.cases_needed_per_variant,
        srm_p_value=result.srm_p_value)


def create_experiment(ctx: CreatorContext) -> Response:
    """Start an experiment (201); 409 while another one runs."""
    body = ctx.parse_body(ExperimentCreate)
    variants = [v.model_dump(exclude_none=True) for v in body.variants]
    with tenant_transaction(ctx.company_id) as tx:
        try:
            row = measurement.create_experiment(tx, ctx.company_id, body.name, variants)
        except measurement.ExperimentRunning:
            raise Conflict("an experiment is already running: stop it before starting another") from None
        return json_response(_view(tx, row, ctx), status=201)


def list_experiments(ctx: CreatorContext) -> ExperimentList:
    with tenant_transaction(ctx.company_id) as tx:
        return ExperimentList(items=[_view(tx, row, ctx) for row in measurement.list_experiments(tx)])


def get_experiment(ctx: CreatorContext, experiment_id: str) -> Experiment:
    eid = parse_uuid(experiment_id, "experiment_id")
    with tenant_transaction(ctx.company_id) as tx:
        row = measurement.get_experiment(tx, eid)
        if row is None:
            raise NotFound("experiment not found")
        return _view(tx, row, ctx)


def stop_experiment(ctx: CreatorContext, experiment_id: str) -> Experiment:
    """Stop it (history kept). Stopping a stopped experiment returns it unchanged."""
    eid = parse_uuid(experiment_id, "experiment_id")
    with tenant_transaction(ctx.company_id) as tx:
        row = measurement.get_experiment(tx, eid, lock=True)
        if row is None:
            raise NotFound("experiment not found")
        if row["status"] == "running":
            measurement.stop_experiment(tx, eid, ctx.now)
            row = measurement.get_experiment(tx, eid)
            assert row is not None
        return _view(tx, row, ctx)
