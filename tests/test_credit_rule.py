"""Who gets the credit for a recovery (recovery_policy's docstring, "Credit for a recovery"): the
rule stated in Python (``credit``), and the SQL that applies it to the ledger
(``store.recovery.recovered_by_sql``: the case writes and the views use it) held to that statement
over every combination of the ledger rows that matter, at the edges of ``CREDIT_SKEW``.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from chalicelib.db_pool import Database
from chalicelib.recovery_policy import CREDIT_SKEW, KIND_ATTACH, KIND_RETRY, RecoveredBy
from chalicelib.store.recovery import recovered_by_sql
from chalicelib.tenancy import service_transaction

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def credit(recovered_at: datetime, rebound_attempts: Iterable[datetime],
           clicks: Iterable[datetime]) -> RecoveredBy:
    """Who gets the credit for a recovery at ``recovered_at``: ``rebound_attempts`` are when
    Rebound asked Whop for the attaches and retries Whop accepted, ``clicks`` when the member
    followed a Rebound link."""
    if any(at <= recovered_at + CREDIT_SKEW for at in rebound_attempts):
        return "rebound_retry"
    if any(at <= recovered_at for at in clicks):
        return "after_click"
    return "other"


def test_credit_goes_to_rebound_retry_then_a_click_then_other() -> None:
    paid = NOW
    assert credit(paid, [paid - timedelta(minutes=5)], [paid - timedelta(days=1)]) == "rebound_retry"
    assert credit(paid, [paid + CREDIT_SKEW], []) == "rebound_retry"  # clock skew between Whop and us
    too_late = paid + CREDIT_SKEW + timedelta(seconds=1)
    assert credit(paid, [too_late], [paid - timedelta(hours=1)]) == "after_click"
    assert credit(paid, [], [paid + timedelta(seconds=1)]) == "other"
    assert credit(paid, [], []) == "other"


# The ledger rows of one case: (kind, status, attempted_at or clicked at).
ATTEMPTS = (None, NOW - timedelta(minutes=5), NOW + CREDIT_SKEW, NOW + CREDIT_SKEW + timedelta(seconds=1))
STATUSES = ("sent", "failed", "pending")
KINDS = (KIND_ATTACH, KIND_RETRY, "nudge")
CLICKS = (None, NOW - timedelta(hours=1), NOW, NOW + timedelta(seconds=1))


def test_the_sql_credit_agrees_with_the_rule_at_every_edge(database: Database) -> None:
    cases: dict[str, RecoveredBy] = {}  # case id -> the rule's answer for its rows
    rows: list[tuple[str, str, str, str, datetime]] = []  # (case, kind, status, result, created_at)
    for attempt, status, kind, click in itertools.product(ATTEMPTS, STATUSES, KINDS, CLICKS):
        case_id = str(uuid.uuid4())
        accepted = []
        if attempt is not None:
            rows.append((case_id, kind, status, json.dumps({"attempted_at": attempt.isoformat()}),
                         attempt - timedelta(minutes=1)))
            if status == "sent" and kind in (KIND_ATTACH, KIND_RETRY):
                accepted.append(attempt)
        if click is not None:
            rows.append((case_id, "link_click", "done", "{}", click))
        cases[case_id] = credit(NOW, accepted, [click] if click is not None else [])
    # The CTE stands in for the ledger table: the expression reads recovery_actions by name.
    sql = ("WITH recovery_actions (case_id, kind, status, result, created_at) AS ("
           " SELECT * FROM unnest(CAST(:case_ids AS uuid[]), CAST(:kinds AS text[]),"
           "   CAST(:statuses AS text[]), CAST(:results AS jsonb[]), CAST(:created AS timestamptz[]))),"
           " c (id) AS (SELECT unnest(CAST(:ids AS uuid[])))"
           " SELECT c.id::text AS id, "
           + recovered_by_sql("c.id", "'recovered'", "CAST(:recovered_at AS timestamptz)")
           + " AS recovered_by FROM c")
    with service_transaction(database) as tx:
        found = tx.query(sql, case_ids=[r[0] for r in rows], kinds=[r[1] for r in rows],
                         statuses=[r[2] for r in rows], results=[r[3] for r in rows],
                         created=[r[4] for r in rows], ids=list(cases), recovered_at=NOW)
        not_recovered = tx.scalar("SELECT " + recovered_by_sql("CAST(:id AS uuid)", "'open'", "now()"),
                                  id=str(uuid.uuid4()))
    assert {r["id"]: r["recovered_by"] for r in found} == cases
    assert set(cases.values()) == {"rebound_retry", "after_click", "other"}  # every outcome was reached
    assert not_recovered is None  # no credit for a case that did not recover
