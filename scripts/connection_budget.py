"""The connection budget of a rendered template: can the functions exhaust the database?

Every function that may use the database (its environment has ``DB_POOL_SIZE``) can open at most
``concurrency × DB_POOL_SIZE`` connections, where concurrency is its reserved concurrency, or
for the consumer the SQS event source's ``MaximumConcurrency``. A database function with neither
is unbounded, and that alone fails the budget. The sum over the functions must stay at or below
``PercentOfMaxConnections`` (template metadata, from infra/functions.toml) of the instance's
``max_connections`` (parameter ``DatabaseMaxConnections``). With RDS Proxy on, the same share
caps what the proxy opens to the database (its ``MaxConnectionsPercent``), so even sessions that
were all pinned would fit.

Used by tests/test_connection_budget.py (the packaged template, default parameters), by
scripts/deploy.py (the stage's real parameter values, before anything changes), and for the
README's table (``python scripts/connection_budget.py build/package/sam.json``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Unbounded(ValueError):
    """A database function with no concurrency limit: its connections have no ceiling."""


@dataclass(frozen=True)
class FunctionShare:
    logical_id: str
    name: str  # the view or handler name (the Lambda's suffix)
    concurrency: int
    pool: int
    limited_by: str  # "reserved concurrency" or "SQS MaximumConcurrency (<parameter>)"

    @property
    def connections(self) -> int:
        return self.concurrency * self.pool


@dataclass(frozen=True)
class Budget:
    shares: tuple[FunctionShare, ...]
    max_connections: int
    percent: int

    @property
    def total(self) -> int:
        return sum(s.connections for s in self.shares)

    @property
    def limit(self) -> int:
        return self.max_connections * self.percent // 100

    @property
    def within(self) -> bool:
        return self.total <= self.limit

    def describe(self) -> str:
        return (f"{self.total} connections at most ({len(self.shares)} database functions), "
                f"budget {self.limit} = {self.percent}% of max_connections {self.max_connections}")


def _parameter(template: Mapping[str, Any], values: Mapping[str, Any], name: str) -> Any:
    if name in values:
        return values[name]
    spec = template.get("Parameters", {}).get(name)
    if spec is None or "Default" not in spec:
        raise ValueError(f"parameter {name} has no value and no default")
    return spec["Default"]


def _resolve(template: Mapping[str, Any], values: Mapping[str, Any], value: Any) -> tuple[int, str]:
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return int(_parameter(template, values, value["Ref"])), value["Ref"]
    return int(value), ""


def _function_name(props: Mapping[str, Any], logical_id: str) -> str:
    name = props.get("FunctionName", {})
    if isinstance(name, dict) and "Fn::Sub" in name:
        return str(name["Fn::Sub"]).removeprefix("${AWS::StackName}-")
    return logical_id


def compute(template: Mapping[str, Any], parameters: Mapping[str, Any] | None = None) -> Budget:
    """The budget of ``template`` with ``parameters`` (else the parameters' defaults)."""
    values = dict(parameters or {})
    shares: list[FunctionShare] = []
    for logical_id, resource in sorted(template["Resources"].items()):
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        pool = props.get("Environment", {}).get("Variables", {}).get("DB_POOL_SIZE")
        if pool is None:
            continue  # no database: not in the budget
        name = _function_name(props, logical_id)
        if props.get("ReservedConcurrentExecutions"):
            concurrency, limited_by = int(props["ReservedConcurrentExecutions"]), "reserved concurrency"
        else:
            scaling = [e["Properties"]["ScalingConfig"]["MaximumConcurrency"]
                       for e in props.get("Events", {}).values()
                       if e.get("Type") == "SQS" and "ScalingConfig" in e.get("Properties", {})]
            if not scaling:
                raise Unbounded(f"{name} uses the database with no concurrency limit: set "
                                "reserved_concurrency for its kind in infra/functions.toml")
            concurrency, parameter = _resolve(template, values, scaling[0])
            limited_by = f"SQS MaximumConcurrency ({parameter})" if parameter else "SQS MaximumConcurrency"
        shares.append(FunctionShare(logical_id, name, concurrency, int(pool), limited_by))
    percent = int(template.get("Metadata", {}).get("Rebound::ConnectionBudget", {})
                  .get("PercentOfMaxConnections", 0))
    if not percent:
        raise ValueError("the template states no connection budget (Metadata Rebound::ConnectionBudget)")
    max_connections = int(_parameter(template, values, "DatabaseMaxConnections"))
    return Budget(tuple(shares), max_connections, percent)


def markdown(budget: Budget, kinds: Mapping[str, str]) -> str:
    """The README's table: one row per kind (``kinds``: function name -> kind), then the total."""
    rows: dict[tuple[str, int, int, str], list[FunctionShare]] = {}
    for share in budget.shares:
        key = (kinds.get(share.name, share.name), share.concurrency, share.pool, share.limited_by)
        rows.setdefault(key, []).append(share)
    lines = ["| kind | functions | concurrency each | connections each | limited by | connections |",
             "|---|---|---|---|---|---|"]
    for (kind, concurrency, pool, limited_by), shares in sorted(rows.items()):
        lines.append(f"| {kind} | {len(shares)} | {concurrency} | {pool} | {limited_by} | "
                     f"{sum(s.connections for s in shares)} |")
    lines.append(f"| **total** | {len(budget.shares)} | | | | **{budget.total}** of {budget.limit} "
                 f"({budget.percent}% of {budget.max_connections}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    template = json.loads(Path(args[0]).read_text())
    budget = compute(template)
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from app import app
    from scripts.split_template import app_routes, load_settings, plan_functions

    settings = load_settings()
    kinds = {p.name: p.kind.name for p in plan_functions(app_routes(app), settings)}
    kinds.update({view: kind for view, kind in settings.handlers.items()})
    print(markdown(budget, kinds))
    print(budget.describe())
    return 0 if budget.within else 1


if __name__ == "__main__":
    sys.exit(main())
