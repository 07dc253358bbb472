"""`make bench`: Rebound's performance as ratios to a floor measured in the same run.

Every figure is one JSON line ``{"name", "value", "goal", "unit", "detail", "met"}``; the last
line is a summary naming the goals met and missed, and the machine. Each timed figure is the
median of ``--repeat`` runs of both sides, interleaved, so background load hits both alike.
Inputs come from fixed seeds; sizes come from flags; ``--quick`` is the smoke run ``make test``
uses (it checks that every figure is emitted, never how fast anything is).

The database is an embedded Postgres in a temporary folder (never ``DATABASE_URL``: the bench
truncates tables). The app connects as the runtime login, so row-level security is on, exactly
as in production; the floors use bare pg8000 on the same login.

Usage: python scripts/bench.py [--quick] [--repeat N] [--events N] [--history N]
       [--tick-not-due N] [--tick-due N] [--cases N] [--only name,name]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("APP_ENV", "test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
for _name, _value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                      "WHOP_API_BASE": "http://127.0.0.1:9/api/v1",
                      "WHOP_JWKS_URL": "http://127.0.0.1:9/.well-known/jwks.json"}.items():
    os.environ.setdefault(_name, _value)

# The app logs (and flushes EMF metrics) to stdout: keep our stdout for the JSON lines only.
OUT = sys.stdout
sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process

NAMES = ("consume_vs_floor", "statements_per_event", "round_trips_per_event", "refold_history_ratio",
         "tick_1m_not_due_ratio", "expire_phase_ratio", "kpi_vs_sql", "cases_page_vs_sql",
         "export_vs_copy", "ingest_vs_floor", "import_vs_stack", "consumer_peak_rss_mb",
         "export_peak_rss_mb", "package_zip_mb")
COMPANY = "biz_bench"


@dataclass
class Args:
    quick: bool = False
    repeat: int = 5
    events: int = 3000
    batch: int = 10
    history: int = 24
    refold_events: int = 20
    tick_not_due: int = 1_000_000
    tick_due: int = 200
    cases: int = 100_000
    only: set[str] = field(default_factory=set)


@dataclass
class Results:
    lines: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, name: str, value: float | None, op: str, target: float, unit: str,
             detail: dict[str, Any] | None = None) -> None:
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        line = {"name": name, "value": None if value is None else round(value, 3),
                "goal": f"{'≤' if op == '<=' else '≥'} {target:g}", "unit": unit,
                "detail": detail or {}, "met": met}
        self.lines.append(line)
        print(json.dumps(line, ensure_ascii=False, default=str), file=OUT, flush=True)


def median_pair(a: Callable[[], object], b: Callable[[], object], repeat: int,
                before: Callable[[], object] | None = None) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately ``repeat`` times each."""
    ta: list[float] = []
    tb: list[float] = []
    for i in range(repeat):
        for fn, times in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            if before is not None:
                before()
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return statistics.median(ta), statistics.median(tb)


def median_time(fn: Callable[[], object], repeat: int, before: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# --- protocol counting: statements and server round trips ---------------------------------------


class WireCounter:
    """Counts statements (Execute / simple Query messages) and waits on the server (every read
    up to ReadyForQuery) by wrapping pg8000's core connection methods for the duration."""

    def __init__(self) -> None:
        self.statements = 0
        self.round_trips = 0

    @contextlib.contextmanager
    def counting(self) -> Iterator[WireCounter]:
        from pg8000.core import CoreConnection

        originals = {n: getattr(CoreConnection, n) for n in ("send_EXECUTE", "send_QUERY", "handle_messages")}

        def send_execute(conn: Any, *a: Any, **k: Any) -> Any:
            self.statements += 1
            return originals["send_EXECUTE"](conn, *a, **k)

        def send_query(conn: Any, *a: Any, **k: Any) -> Any:
            self.statements += 1
            return originals["send_QUERY"](conn, *a, **k)

        def handle(conn: Any, *a: Any, **k: Any) -> Any:
            self.round_trips += 1
            return originals["handle_messages"](conn, *a, **k)

        CoreConnection.send_EXECUTE = send_execute  # type: ignore[method-assign]
        CoreConnection.send_QUERY = send_query  # type: ignore[method-assign]
        CoreConnection.handle_messages = handle  # type: ignore[method-assign]
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(CoreConnection, name, fn)


# --- the database --------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: Args) -> None:
        from chalicelib import config, tenancy
        from chalicelib.database_url import parse_database_url
        from chalicelib.db_pool import connect
        from scripts import localdb

        self.args = args
        self.results = Results()
        base = ROOT / ".tmp"
        base.mkdir(exist_ok=True)
        self.data_dir = Path(tempfile.mkdtemp(prefix="bench-pg-", dir=base))
        os.environ.pop("DATABASE_URL", None)
        self.local = localdb.start(self.data_dir, log=lambda _m: None)
        os.environ["DATABASE_URL"] = self.local.runtime_url
        config.reset_config()
        tenancy.reset_database()
        # Loading a million rows on a busy machine outlasts the default socket timeout.
        self.owner = connect(parse_database_url(self.local.owner_url), timeout_s=3600)
        # The floors: bare pg8000 on the runtime login (RLS applies to them as to the app).
        self.bare = connect(parse_database_url(self.local.runtime_url), timeout_s=600)
        self.now = datetime.now(UTC)

    def close(self) -> None:
        from chalicelib import tenancy

        with contextlib.suppress(Exception):
            self.owner.close()
            self.bare.close()
        tenancy.reset_database()
        self.local.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.data_dir.parent / f".{self.data_dir.name}-run", ignore_errors=True)

    def truncate(self) -> None:
        self.owner.run("TRUNCATE events, recovery_actions, case_link_aliases, recovery_cases,"
                       " creator_settings, rate_limits")

    def wanted(self, *names: str) -> bool:
        return not self.args.only or bool(self.args.only & set(names))

    # --- consumer ------------------------------------------------------------------------------

    def _events(self, n: int, seed: int = 13) -> list[tuple[str, bytes]]:
        """``n`` webhooks over n/3 memberships of 10 companies: failures, retries, recoveries."""
        from scripts.whop_payloads import payment_event

        rng = random.Random(seed)
        patterns = (("payment.failed", "payment.failed", "payment.succeeded"),
                    ("payment.failed", "payment.failed", "payment.failed"),
                    ("payment.failed", "payment.succeeded", "payment.failed"))
        out: list[tuple[str, bytes]] = []
        member = 0
        while len(out) < n:
            member += 1
            company = f"{COMPANY}_{member % 10}"
            start = self.now - timedelta(days=3, minutes=member)
            for k, kind in enumerate(rng.choice(patterns)):
                out.append(payment_event(kind, company=company, membership=f"mem_{member}",
                                         user=f"user_{member}", at=start + timedelta(hours=k),
                                         msg_id=f"msg_{seed}_{member}_{k}", payment=f"pay_{member}_{k}"))
        rng.shuffle(out)
        return out[:n]

    @staticmethod
    def _records(events: list[tuple[str, bytes]], received: datetime) -> list[dict[str, Any]]:
        """SQS records as the webhook route queues them (the minimised event, not the body)."""
        from chalicelib.queue import encode_message
        from chalicelib.webhook_text import minimal_payload
        from chalicelib.webhooks import normalise

        records = []
        for msg_id, body in events:
            event = normalise(body, msg_id, received)
            assert event is not None
            text, attributes = encode_message(msg_id, received, event=minimal_payload(event))
            records.append({
                "messageId": f"sqs-{msg_id}", "receiptHandle": "r", "body": text, "attributes": {},
                "messageAttributes": {k: {"stringValue": v["StringValue"], "dataType": "String"}
                                      for k, v in attributes.items()},
                "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:bench", "awsRegion": "us-east-1"})
        return records

    def _consume(self, records: list[dict[str, Any]]) -> None:
        from chalicelib.processing import handle_batch

        size = self.args.batch
        for i in range(0, len(records), size):
            result = handle_batch({"Records": records[i:i + size]})
            if result.get("batchItemFailures"):
                raise RuntimeError(f"bench batch failed: {result}")

    @staticmethod
    def _normalised(events: list[tuple[str, bytes]], received: datetime) -> list[Any]:
        from chalicelib.webhooks import normalise

        return [normalise(body, msg_id, received) for msg_id, body in events]

    def _floor(self, events: list[Any], received: datetime) -> None:
        """What the consumer cannot do with less: one transaction per event that sets the tenant,
        stores the event and upserts its case (5 statements, 11 waits on the server)."""
        from chalicelib.webhook_text import minimal_payload

        conn = self.bare
        for event in events:
            conn.run("START TRANSACTION")
            conn.run("SELECT set_config('app.company_id', :c, true)", c=event.company_id)
            conn.run("INSERT INTO events (webhook_id, company_id, type, membership_id, user_id, payment_id,"
                     " occurred_at, received_at, payload) VALUES (:w, :c, :t, :m, :u, :p, :o, :r,"
                     " CAST(:payload AS jsonb)) ON CONFLICT (webhook_id) DO NOTHING",
                     w=event.webhook_id, c=event.company_id, t=event.type.value, m=event.membership_id,
                     u=event.user_id, p=event.payment_id, o=event.occurred_at, r=received,
                     payload=json.dumps(minimal_payload(event)))
            conn.run("INSERT INTO recovery_cases (company_id, membership_id, episode_webhook_id, user_id,"
                     " first_failure_at, last_failure_at) VALUES (:c, :m, :m, :u, :o, :o) ON CONFLICT"
                     " (company_id, episode_webhook_id) WHERE episode_webhook_id IS NOT NULL"
                     " DO UPDATE SET last_failure_at = GREATEST(recovery_cases.last_failure_at,"
                     " EXCLUDED.last_failure_at), failure_count = recovery_cases.failure_count + 1,"
                     " updated_at = now()", c=event.company_id, m=event.membership_id, u=event.user_id,
                     o=event.occurred_at)
            conn.run("COMMIT")

    def consumer(self) -> None:
        from chalicelib import processing

        args = self.args
        # No Whop: the T+0 nudges would be HTTP calls; the rows they owe are still written.
        processing.send_opening_nudges = lambda *_a, **_k: None  # type: ignore[assignment]
        events = self._events(args.events)
        received = self.now
        records = self._records(events, received)
        if self.wanted("consume_vs_floor"):
            normalised = self._normalised(events, received)
            t_app, t_floor = median_pair(lambda: self._consume(records),
                                         lambda: self._floor(normalised, received),
                                         max(1, args.repeat // 2), before=self.truncate)
            n = len(events)
            self.results.emit("consume_vs_floor", t_floor / t_app, ">=", 0.6, "ratio", {
                "events": n, "batch": args.batch, "rebound_events_per_s": round(n / t_app, 1),
                "floor_events_per_s": round(n / t_floor, 1),
                "floor": "bare pg8000: set tenant, insert event, upsert case; one transaction per event"})
        if self.wanted("statements_per_event", "round_trips_per_event"):
            sample = events[: min(len(events), 600)]
            sample_records = self._records(sample, received)
            self.truncate()
            with WireCounter().counting() as app:
                self._consume(sample_records)
            self.truncate()
            with WireCounter().counting() as floor:
                self._floor(self._normalised(sample, received), received)
            n = len(sample)
            self.results.emit("statements_per_event", app.statements / n, "<=", 6, "statements/event", {
                "events": n, "floor": round(floor.statements / n, 2)})
            self.results.emit("round_trips_per_event", app.round_trips / n, "<=", 8, "round trips/event", {
                "events": n, "floor": round(floor.round_trips / n, 2)})
        if self.wanted("consumer_peak_rss_mb"):
            self.truncate()
            before, peak, allocated = peak_rss(lambda: self._consume(records[:200]))
            self.results.emit("consumer_peak_rss_mb", peak, "<=", 256, "MB", {
                "rss_before_mb": round(before, 1), "allocated_peak_mb": round(allocated, 2),
                "events": min(200, len(records)), "goal_basis": "half the 512 MB Lambda"})

    def refold(self) -> None:
        """Per-event cost for a membership with ``history`` past cases vs one with one."""
        from scripts.whop_payloads import payment_event

        args = self.args
        self.truncate()
        base = self.now - timedelta(days=20 * args.history + 30)
        setup: list[tuple[str, bytes]] = []
        for j in range(args.history):
            at = base + timedelta(days=20 * j)
            for kind, offset in (("payment.failed", 0), ("payment.succeeded", 1)):
                setup.append(payment_event(kind, company=COMPANY, membership="mem_long", user="user_long",
                                           at=at + timedelta(days=offset), msg_id=f"msg_long_{j}_{offset}",
                                           payment=f"pay_long_{j}"))
        for kind, offset in (("payment.failed", 0), ("payment.succeeded", 1)):
            setup.append(payment_event(kind, company=COMPANY, membership="mem_short", user="user_short",
                                       at=base + timedelta(days=offset), msg_id=f"msg_short_{offset}",
                                       payment="pay_short"))
        # Each membership's current episode opens (untimed); timed events then re-fold it.
        for who in ("long", "short"):
            setup.append(payment_event("payment.failed", company=COMPANY, membership=f"mem_{who}",
                                       user=f"user_{who}", at=self.now - timedelta(hours=5),
                                       msg_id=f"msg_{who}_open", payment=f"pay_{who}_open"))
        self._consume(self._records(setup, self.now))
        counter = {"n": 0}

        def one(who: str) -> None:
            counter["n"] += 1
            n = counter["n"]
            event = payment_event("payment.failed", company=COMPANY, membership=f"mem_{who}",
                                  user=f"user_{who}", at=self.now - timedelta(hours=4, seconds=n),
                                  msg_id=f"msg_{who}_retry_{n}", payment=f"pay_{who}_open")
            self._consume(self._records([event], self.now))

        t_long, t_short = median_pair(lambda: one("long"), lambda: one("short"), args.refold_events)
        self.results.emit("refold_history_ratio", t_long / t_short, "<=", 1.5, "ratio", {
            "past_cases": args.history, "ms_per_event_long": round(t_long * 1000, 2),
            "ms_per_event_one_case": round(t_short * 1000, 2)})

    # --- the tick ------------------------------------------------------------------------------

    def tick(self) -> None:
        from chalicelib import tenancy
        from chalicelib.claims import Context
        from chalicelib.effects import clear_experience_cache
        from chalicelib.scheduler import expire_cases, tick

        args = self.args
        self.truncate()
        clear_experience_cache()
        company = f"{COMPANY}_tick"
        now = self.now
        self.owner.run(
            "INSERT INTO recovery_cases (company_id, membership_id, user_id, first_failure_at,"
            " last_failure_at, next_action_at, link_token) SELECT :c, 'due_' || g, 'user_due_' || g,"
            " :ff, :ff, :due, 'tok_due_' || g FROM generate_series(1, :n) g",
            c=company, n=args.tick_due, ff=now - timedelta(days=2, hours=1), due=now - timedelta(hours=1))
        self.owner.run("ANALYZE recovery_cases")
        ctx = Context(whop=NullWhop(), app_id="app_bench", public_base_url="https://bench.invalid")
        database = tenancy.get_database()

        def rearm() -> None:
            # Every run does the same work: the due cases owe their day-2 reminder again.
            self.owner.run("UPDATE recovery_cases SET last_reminder_offset = NULL, next_action_at = :due"
                           " WHERE company_id = :c AND membership_id LIKE 'due_%'",
                           c=company, due=now - timedelta(hours=1))
            self.owner.run("DELETE FROM recovery_actions WHERE company_id = :c", c=company)

        def run_tick() -> None:
            result = tick(ctx, now, database)
            if result.due != args.tick_due:
                raise RuntimeError(f"tick saw {result.due} due cases, expected {args.tick_due}")

        repeat = args.repeat
        t_none = median_time(run_tick, repeat, before=rearm)
        e_none = median_time(lambda: expire_cases(company, now, database), repeat)
        started = time.perf_counter()
        self.owner.run(
            "INSERT INTO recovery_cases (company_id, membership_id, user_id, first_failure_at,"
            " last_failure_at, next_action_at) SELECT :c, 'open_' || g, 'user_' || g,"
            " CAST(:now AS timestamptz) - make_interval(secs => g % 86400),"
            " CAST(:now AS timestamptz) - make_interval(secs => g % 86400),"
            " CAST(:later AS timestamptz) + make_interval(secs => g % 86400) FROM generate_series(1, :n) g",
            c=company, n=args.tick_not_due, now=now, later=now + timedelta(days=1))
        self.owner.run("ANALYZE recovery_cases")
        load_s = time.perf_counter() - started
        t_many = median_time(run_tick, repeat, before=rearm)
        e_many = median_time(lambda: expire_cases(company, now, database), repeat)
        self.results.emit("tick_1m_not_due_ratio", t_many / t_none, "<=", 1.5, "ratio", {
            "not_due_open_cases": args.tick_not_due, "due_cases": args.tick_due,
            "ms_with_not_due": round(t_many * 1000, 1), "ms_without": round(t_none * 1000, 1),
            "load_s": round(load_s, 1)})
        self.results.emit("expire_phase_ratio", e_many / e_none, "<=", 1.5, "ratio", {
            "ms_with_not_due": round(e_many * 1000, 2), "ms_without": round(e_none * 1000, 2)})

    # --- the creator API -------------------------------------------------------------------------

    def load_cases(self) -> str:
        """``cases`` cases of one company (COPY-speed generate_series), a third with a sent nudge."""
        company = f"{COMPANY}_api"
        self.truncate()
        self.owner.run(
            "INSERT INTO recovery_cases (company_id, membership_id, user_id, status, first_failure_at,"
            " last_failure_at, failure_count, amount_minor, currency, decline_code, failure_reason,"
            " recovered_at, recovered_amount_minor, recovered_currency, closed_at, close_reason)"
            " SELECT :c, 'mem_' || g, 'user_' || g,"
            "  (ARRAY['open','open','open','recovered','recovered','recovered','recovered','expired',"
            "         'expired','cancelled'])[1 + g % 10],"
            "  CAST(:now AS timestamptz) - make_interval(secs => (g * 37) % 5184000),"
            "  CAST(:now AS timestamptz) - make_interval(secs => (g * 37) % 5184000)"
            "   + interval '1 hour',"
            "  1 + g % 3, 999 + g % 5000, (ARRAY['usd','eur','gbp'])[1 + g % 3],"
            "  CASE WHEN g % 4 = 0 THEN 'insufficient_funds' END,"
            "  CASE g % 7 WHEN 0 THEN 'Card declined, \"do not honor\"' WHEN 1 THEN '=HYPERLINK(1)'"
            "   ELSE 'Your card has insufficient funds.' END,"
            "  CASE WHEN g % 10 BETWEEN 3 AND 6"
            "   THEN CAST(:now AS timestamptz) - make_interval(secs => (g * 37) % 5184000)"
            "   + interval '2 days' END,"
            "  CASE WHEN g % 10 BETWEEN 3 AND 6 THEN 999 + g % 5000 END,"
            "  CASE WHEN g % 10 BETWEEN 3 AND 6 THEN (ARRAY['usd','eur','gbp'])[1 + g % 3] END,"
            "  CASE WHEN g % 10 >= 3"
            "   THEN CAST(:now AS timestamptz) - make_interval(secs => (g * 37) % 5184000)"
            "   + interval '2 days' END,"
            "  CASE WHEN g % 10 >= 3 THEN 'closed' END"
            " FROM generate_series(1, :n) g", c=company, n=self.args.cases, now=self.now)
        self.owner.run(
            "INSERT INTO recovery_actions (case_id, company_id, kind, step, channel, status,"
            " idempotency_key, completed_at) SELECT id, company_id, 'nudge', 't0', 'dm', 'sent',"
            " 'bench_' || id, first_failure_at FROM recovery_cases WHERE company_id = :c"
            " AND membership_id ~ '[0369]$'", c=company)
        self.owner.run("VACUUM ANALYZE recovery_cases")
        self.owner.run("VACUUM ANALYZE recovery_actions")
        return company

    def _ctx(self, company: str, query: dict[str, str]) -> Any:
        from chalicelib.api import CreatorContext

        return CreatorContext(user_id="user_admin", company_id=company, now=self.now, query=query, body=b"")

    def _bare_tx(self, company: str, sql: str, stream: Any = None, **params: Any) -> Any:
        conn = self.bare
        conn.run("START TRANSACTION")
        conn.run("SELECT set_config('app.company_id', :c, true)", c=company)
        rows = conn.run(sql, stream=stream, **params) if stream is not None else conn.run(sql, **params)
        conn.run("COMMIT")
        return rows

    def _plan(self, company: str, sql: str, **params: Any) -> str:
        from chalicelib.tenancy import tenant_transaction

        with tenant_transaction(company) as tx:
            rows = tx.query("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sql, **params)
        return " | ".join(str(next(iter(r.values()))).strip() for r in rows[:6])

    def api(self) -> None:
        from chalicelib.api.cases import export_csv, list_cases
        from chalicelib.api.kpis import get_kpis
        from chalicelib.http import json_response
        from chalicelib.measurement import KPI_GROUPS_SQL, kpi_group_params

        args = self.args
        company = self.load_cases()
        window = timedelta(days=30)
        kpi_sql = KPI_GROUPS_SQL  # the route's own query (issue 10 added its breakdowns), run bare
        kpi_params = kpi_group_params(self.now, window)
        if self.wanted("kpi_vs_sql"):
            ctx = self._ctx(company, {"window_days": "30"})
            t_route, t_sql = median_pair(lambda: json_response(get_kpis(ctx)),
                                         lambda: self._bare_tx(company, kpi_sql, **kpi_params), args.repeat)
            self.results.emit("kpi_vs_sql", t_route / t_sql, "<=", 1.3, "ratio", {
                "cases": args.cases, "route_ms": round(t_route * 1000, 2), "sql_ms": round(t_sql * 1000, 2),
                "plan": self._plan(company, kpi_sql, **kpi_params)})
        if self.wanted("cases_page_vs_sql"):
            from chalicelib.store.views import CASE_VIEW_COLUMNS

            ctx = self._ctx(company, {})
            page_sql = ("SELECT " + CASE_VIEW_COLUMNS + " FROM recovery_cases"
                        " ORDER BY first_failure_at DESC, id DESC LIMIT 26")
            t_route, t_sql = median_pair(lambda: json_response(list_cases(ctx)),
                                         lambda: self._bare_tx(company, page_sql), args.repeat * 4)
            self.results.emit("cases_page_vs_sql", t_route / t_sql, "<=", 1.3, "ratio", {
                "route_ms": round(t_route * 1000, 2), "sql_ms": round(t_sql * 1000, 2)})
        if self.wanted("export_vs_copy", "export_peak_rss_mb"):
            ctx = self._ctx(company, {})
            body = export_csv(ctx).body
            assert isinstance(body, str)
            rows = body.count("\n") - 1
            copy_sql = (
                "COPY (SELECT id::text AS case_id, membership_id, user_id, status, first_failure_at,"
                " last_failure_at, recovered_at, amount_minor, COALESCE(currency, recovered_currency),"
                " recovered_amount_minor, failure_count, decline_code, failure_reason,"
                " (SELECT count(*) FROM recovery_actions a WHERE a.case_id = recovery_cases.id"
                "   AND a.kind IN ('nudge', 'reminder', 'manual_nudge') AND a.status = 'sent'),"
                " incentive_days, holdout, experiment_id, variant, decline_class, link_clicks,"  # issue 10's
                " opened_at, holdout_percent_at_open, contaminated, incentive_cost_minor,"
                " retried_at, CASE WHEN status = 'recovered' THEN COALESCE(recovered_by, 'other') END"  # 18's
                " FROM recovery_cases ORDER BY first_failure_at DESC, id DESC"
                f" LIMIT {int(rows)}) TO STDOUT WITH (FORMAT csv, HEADER)")

            def copy() -> None:
                self._bare_tx(company, copy_sql, stream=io.BytesIO())

            if self.wanted("export_vs_copy"):
                t_route, t_copy = median_pair(lambda: export_csv(ctx), copy, args.repeat)
                self.results.emit("export_vs_copy", t_route / t_copy, "<=", 2.0, "ratio", {
                    "rows": rows, "body_mb": round(len(body) / 1e6, 2), "route_ms": round(t_route * 1000, 1),
                    "copy_ms": round(t_copy * 1000, 1)})
            if self.wanted("export_peak_rss_mb"):
                body_mb = len(body.encode()) / 2**20
                del body
                before, peak, allocated = peak_rss(lambda: export_csv(ctx))
                self.results.emit("export_peak_rss_mb", allocated, "<=", round(2.5 * body_mb, 1), "MB", {
                    "allocated_per_body": round(allocated / body_mb, 2), "body_mb": round(body_mb, 2),
                    "rss_before_mb": round(before, 1), "rss_high_water_mb": round(peak, 1),
                    "goal_basis": "2.5 × the body (the body itself is a string Chalice must hold,"
                    " and Lambda copies it once more into JSON)"})


# --- what needs no database ----------------------------------------------------------------------


class NullWhop:
    """A Whop that accepts every call at once: the tick bench measures Rebound, not HTTP."""

    def __getattr__(self, name: str) -> Any:
        from chalicelib.whop import WhopResult

        if name == "find_app_experience":
            return lambda *_a, **_k: "exp_bench"
        return lambda *_a, **_k: WhopResult(ok=True, status_code=200)


def peak_rss(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(RSS before, RSS high-water mark during ``fn``, peak of memory ``fn`` allocated) in MiB.
    The high-water mark misses growth that reuses memory freed earlier in the run, so the
    allocation peak (tracemalloc: Python objects, which is where a body would pile up) is the
    figure; the kernel's view is in the detail."""
    import gc
    import tracemalloc

    def status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = status("VmRSS")
    tracemalloc.start()
    try:
        fn()
        _, allocated = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return before, status("VmHWM"), allocated / 2**20


def ingest(results: Results, repeat: int, n: int) -> None:
    from standardwebhooks import Webhook

    from chalicelib.ingest import accept_webhook
    from scripts.whop_payloads import SECRET, payment_event, sign

    now = datetime.now(UTC)
    msg_id, body = payment_event("payment.failed", at=now, msg_id="msg_ingest")
    headers = sign(body, msg_id, at=now)
    hook = Webhook(base64.b64encode(SECRET.encode()).decode())

    class NullQueue:
        def send(self, webhook_id: str, received_at: datetime, **content: Any) -> str:
            return "m"

    queue = NullQueue()

    def app() -> None:
        for _ in range(n):
            accept_webhook(body, headers, SECRET, now, lambda: queue)  # type: ignore[arg-type,return-value]

    def floor() -> None:
        for _ in range(n):
            hook.verify(body, headers)
            json.loads(body)

    assert accept_webhook(body, headers, SECRET, now, lambda: queue).status_code == 200  # type: ignore[arg-type,return-value]
    t_app, t_floor = median_pair(app, floor, repeat)
    results.emit("ingest_vs_floor", t_app / t_floor, "<=", 1.5, "ratio", {
        "us_per_webhook": round(t_app / n * 1e6, 1), "floor_us": round(t_floor / n * 1e6, 1),
        "floor": "standardwebhooks verify + json.loads"})


def import_cost(results: Results, repeat: int) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    stack = ("import chalice, pg8000.native, pydantic, boto3, standardwebhooks;"
             " from aws_lambda_powertools import Logger, Metrics")

    def run(code: str) -> Callable[[], None]:
        return lambda: subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                                      stdout=subprocess.DEVNULL)

    run("import app")()  # warm the OS file cache for both
    t_app, t_stack = median_pair(run("import app"), run(stack), repeat)
    results.emit("import_vs_stack", t_app / t_stack, "<=", 1.3, "ratio", {
        "app_ms": round(t_app * 1000, 1), "stack_ms": round(t_stack * 1000, 1),
        "stack": "chalice, pg8000, pydantic, boto3, standardwebhooks, powertools Logger+Metrics"})


def package_size(results: Results, quick: bool) -> None:
    limit_mb = 50.0  # Lambda's limit for a zip uploaded directly
    if quick:
        results.emit("package_zip_mb", None, "<=", limit_mb, "MB", {"skipped": "--quick"})
        return
    out = Path(tempfile.mkdtemp(prefix="bench-pkg-"))
    try:
        subprocess.run([str(Path(sys.executable).parent / "chalice"), "package", "--stage", "prod", str(out)],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}, timeout=600)
        size = (out / "deployment.zip").stat().st_size / 2**20
        results.emit("package_zip_mb", size, "<=", limit_mb, "MB",
                     {"share_of_limit": round(size / limit_mb, 3)})
    except (subprocess.SubprocessError, OSError) as exc:
        results.emit("package_zip_mb", None, "<=", limit_mb, "MB", {"error": type(exc).__name__})
    finally:
        shutil.rmtree(out, ignore_errors=True)


def machine(bench: Bench | None) -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform(terse=True)}
    if bench is not None:
        info["postgres"] = bench.owner.run("SHOW server_version")[0][0]
        from chalicelib.config import get_config

        info["db_statements"] = getattr(get_config(), "DB_STATEMENTS", "run")
    return info


def parse(argv: list[str]) -> Args:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run")
    p.add_argument("--repeat", type=int)
    p.add_argument("--events", type=int)
    p.add_argument("--history", type=int)
    p.add_argument("--tick-not-due", type=int)
    p.add_argument("--tick-due", type=int)
    p.add_argument("--cases", type=int)
    p.add_argument("--only", default="", help="comma-separated figure names")
    ns = p.parse_args(argv)
    args = Args()
    if ns.quick:
        args = Args(quick=True, repeat=1, events=60, history=4, refold_events=2, tick_not_due=2000,
                    tick_due=20, cases=2000)
    for name in ("repeat", "events", "history", "tick_not_due", "tick_due", "cases"):
        if getattr(ns, name) is not None:
            setattr(args, name, getattr(ns, name))
    args.only = {n for n in ns.only.split(",") if n}
    unknown = args.only - set(NAMES)
    if unknown:
        p.error(f"unknown figure(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    results = Results()

    def wanted(*names: str) -> bool:
        return not args.only or bool(args.only & set(names))

    if wanted("ingest_vs_floor"):
        ingest(results, args.repeat, 200 if args.quick else 2000)
    if wanted("import_vs_stack"):
        import_cost(results, args.repeat)
    bench: Bench | None = None
    db_figures = set(NAMES) - {"ingest_vs_floor", "import_vs_stack", "package_zip_mb"}
    try:
        if not args.only or args.only & db_figures:
            bench = Bench(args)
            bench.results = results
            if wanted("consume_vs_floor", "statements_per_event", "round_trips_per_event",
                      "consumer_peak_rss_mb"):
                bench.consumer()
            if wanted("refold_history_ratio"):
                bench.refold()
            if wanted("kpi_vs_sql", "cases_page_vs_sql", "export_vs_copy", "export_peak_rss_mb"):
                bench.api()
            if wanted("tick_1m_not_due_ratio", "expire_phase_ratio"):
                bench.tick()
        if wanted("package_zip_mb"):
            package_size(results, args.quick)
        info = machine(bench)
    finally:
        if bench is not None:
            bench.close()
    met = [line["name"] for line in results.lines if line["met"]]
    missed = [line["name"] for line in results.lines if line["met"] is False]
    print(json.dumps({"summary": True, "met": met, "missed": missed,
                      "not_measured": [line["name"] for line in results.lines if line["met"] is None],
                      "goals_met": f"{len(met)}/{len(met) + len(missed)}", "machine": info},
                     ensure_ascii=False), file=OUT, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
