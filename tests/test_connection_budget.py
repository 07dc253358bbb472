"""The connection budget (scripts/connection_budget.py) of the packaged template: every function
that may use the database has a ceiling, the ceilings together stay under the stated share of the
instance's max_connections, RDS Proxy is on by default and its own pool is capped at the same
share, and the README's table is exactly what the template gives. Functions are counted from the
template: a route added by anyone is counted without editing this test."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from scripts import connection_budget as cb
from scripts import split_template as st
from tests.conftest import ROOT, Packaged


def kinds_by_function() -> dict[str, str]:
    from app import app

    settings = st.load_settings()
    kinds = {p.name: p.kind.name for p in st.plan_functions(st.app_routes(app), settings)}
    return {**kinds, **settings.handlers}


def test_the_packaged_template_stays_within_its_connection_budget(packaged: Packaged) -> None:
    template, _, _ = packaged
    budget = cb.compute(template)
    settings = st.load_settings()
    assert budget.percent == round(settings.budget_share * 100) == 50
    assert budget.max_connections == template["Parameters"]["DatabaseMaxConnections"]["Default"]
    assert budget.within, budget.describe()
    database_functions = {n for n, k in kinds_by_function().items()
                          if "DATABASE_URL" in settings.kinds[k].secrets}
    assert {s.name for s in budget.shares} == database_functions
    for share in budget.shares:
        assert share.pool == 1 and share.concurrency >= 1, share
    consumer = next(s for s in budget.shares if s.name == "process_events")
    assert consumer.limited_by == "SQS MaximumConcurrency (ConsumerMaxConcurrency)"
    assert consumer.concurrency == template["Parameters"]["ConsumerMaxConcurrency"]["Default"]


def test_the_readme_shows_the_budget_of_the_template(packaged: Packaged) -> None:
    template, _, _ = packaged
    table = cb.markdown(cb.compute(template), kinds_by_function())
    readme = (ROOT / "README.md").read_text()
    assert table in readme, "README's connection table differs from the template:\n" + table


def test_over_the_budget_or_unbounded_fails(packaged: Packaged) -> None:
    template, _, _ = packaged
    assert not cb.compute(template, {"ConsumerMaxConcurrency": 150}).within
    assert not cb.compute(template, {"DatabaseMaxConnections": 150}).within
    unbounded = copy.deepcopy(template)
    del unbounded["Resources"]["GetKpis"]["Properties"]["ReservedConcurrentExecutions"]
    with pytest.raises(cb.Unbounded, match="get_kpis"):
        cb.compute(unbounded)
    grown = copy.deepcopy(template)  # a 25th creator route, as another issue may add
    grown["Resources"]["RetryCase"] = copy.deepcopy(grown["Resources"]["GetKpis"])
    name = {"Fn::Sub": "${AWS::StackName}-retry_case"}
    grown["Resources"]["RetryCase"]["Properties"]["FunctionName"] = name
    assert cb.compute(grown).total == cb.compute(template).total + 5


def test_rds_proxy_is_on_by_default_and_capped_like_the_budget(packaged: Packaged) -> None:
    template, _, _ = packaged
    res = template["Resources"]
    assert template["Parameters"]["UseRdsProxy"]["Default"] == "true"
    proxy = res["DatabaseProxy"]
    assert proxy["Condition"] == "UseRdsProxy" and proxy["Properties"]["EngineFamily"] == "POSTGRESQL"
    assert proxy["Properties"]["RequireTLS"] is True
    assert proxy["Properties"]["Auth"][0]["SecretArn"] == {"Ref": "RuntimeLoginSecretArn"}
    role = json.dumps(res["DatabaseProxyRole"]["Properties"]["Policies"])
    assert '"Ref": "RuntimeLoginSecretArn"' in role and "DatabaseUrlSecretArn" not in role
    pool = res["DatabaseProxyTargetGroup"]["Properties"]["ConnectionPoolConfigurationInfo"]
    assert pool["MaxConnectionsPercent"] == cb.compute(template).percent
    assert pool["ConnectionBorrowTimeout"] < 29, "a borrow wait must end inside API Gateway's 29 s"
    for logical, resource in res.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        env: dict[str, Any] = resource["Properties"]["Environment"]["Variables"]
        if "DB_POOL_SIZE" in env:
            # Behind the proxy: its endpoint, and statements that leave no session state.
            assert env["DB_STATEMENTS"] == {"Fn::If": ["UseRdsProxy", "unnamed", "prepared"]}, logical
            assert env["DATABASE_PROXY_HOST"]["Fn::If"][1] == {"Fn::GetAtt": ["DatabaseProxy", "Endpoint"]}
        else:
            assert not {"DB_STATEMENTS", "DATABASE_PROXY_HOST"} & set(env), logical


def test_the_cli_prints_the_table_and_fails_over_budget(packaged: Packaged, tmp_path: Any,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    template, out, _ = packaged
    assert cb.main([str(out / "sam.json")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\| \*\*total\*\* \| \d+ \|", printed)
    over = copy.deepcopy(template)
    over["Parameters"]["ConsumerMaxConcurrency"]["Default"] = 500
    (tmp_path / "over.json").write_text(json.dumps(over))
    assert cb.main([str(tmp_path / "over.json")]) == 1
