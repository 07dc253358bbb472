"""`make dev`: the whole service on this machine, with no system installs.

Starts, in order: embedded Postgres (pgserver, migrated), moto server as local SQS (queue + DLQ
with a redrive policy), the bundled fake Whop (unless WHOP_API_BASE is set), the local consumer
(feeds process_events like Lambda's SQS event source), the local scheduler (process_reminders
every SCHEDULER_EVERY_S seconds), and `chalice local --no-autoreload` on 127.0.0.1:${PORT:-8000}.
Seeds demo data once and prints the dashboard URL with a dev token. Ctrl-C stops everything.
State lives under ${REBOUND_DATA_DIR:-.dev}; a new folder is a fresh start.

For a newcomer: the URLs (and the dev-only secrets) go to <data>/dev.json, which simulate.py reads,
so PORT / FAKE_WHOP_PORT / MOTO_PORT need setting only here; the fake Whop's signing key lives in
<data>, so a printed token survives a restart; moto's access lines go to <data>/moto.log; metrics
lines stay off unless REBOUND_DEV_METRICS=1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chalicelib.auth import MAX_TOKEN_LIFETIME_S  # noqa: E402
from chalicelib.config import DEV_DEFAULTS  # noqa: E402
from scripts import local_sqs, localdb  # noqa: E402
from scripts.whop_payloads import card_saved_event, membership_event, payment_event, sign  # noqa: E402

BIN = Path(sys.executable).parent
DEMO_COMPANY = "biz_demo"
DEMO_ADMIN = "user_demo_admin"
# The printed dev token: as long as the app accepts (auth refuses longer-lived tokens, even in
# dev), less a margin for clock rounding. Every start prints a fresh one.
DEV_TOKEN_LIFETIME_S = MAX_TOKEN_LIFETIME_S - 600
DEMO_EXPERIENCE = "exp_demo"
DEMO_CARD = "payt_demo_5_new"
# What make dev gives every process it starts (unless already set): readable log lines, one per
# record (chalicelib.observability; Lambda keeps JSON whatever this says).
LOCAL_ENV = {"REBOUND_LOG_FORMAT": "text"}


def wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own 127.0.0.1 servers
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


def post_json(url: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",  # noqa: S310
                                 headers={"content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        return json.loads(resp.read() or b"null")


def seed_fake_whop(fake: str, owner_url: str) -> None:
    """The fake Whop keeps state in memory: on every start give it the demo company, the demo
    members, and every membership the database already has cases for (from simulate.py, …)."""
    post_json(f"{fake}/_fake/access", {"user_id": DEMO_ADMIN, "resource_id": DEMO_COMPANY, "level": "admin"})
    post_json(f"{fake}/_fake/experiences", {"company_id": DEMO_COMPANY, "experience_id": DEMO_EXPERIENCE})
    members = {f"mem_demo_{i}": (DEMO_COMPANY, f"user_demo_{i}") for i in range(1, 6)}
    members.update(known_memberships(owner_url))
    for membership_id, (company_id, user_id) in sorted(members.items()):
        post_json(f"{fake}/_fake/memberships", {"id": membership_id, "company_id": company_id,
                                                 "user_id": user_id})
    # The demo payments (a retry or an attach charges one), and the member of mem_demo_5
    # who saves a new card.
    for i, (amount, status) in enumerate(((1999, "open"), (4900, "paid"), (999, "open"), (2900, "open"),
                                          (1500, "open")), start=1):
        post_json(f"{fake}/_fake/payments", {"id": f"pay_demo_{i}", "company_id": DEMO_COMPANY,
                                             "membership_id": f"mem_demo_{i}", "user_id": f"user_demo_{i}",
                                             "amount_minor": amount, "status": status})
    post_json(f"{fake}/_fake/payment_methods", {"payment_method_id": DEMO_CARD, "company_id": DEMO_COMPANY,
                                                "user_id": "user_demo_5", "outcome": "paid"})


def known_memberships(owner_url: str) -> dict[str, tuple[str, str | None]]:
    from chalicelib.database_url import parse_database_url
    from chalicelib.db_pool import connect

    conn = connect(parse_database_url(owner_url))
    try:
        rows = conn.run("SELECT DISTINCT ON (membership_id) membership_id, company_id, user_id"
                        " FROM recovery_cases ORDER BY membership_id, created_at DESC") or []
    finally:
        conn.close()
    return {str(m): (str(c), u) for m, c, u in rows}


def write_dev_file(path: Path, info: dict[str, str]) -> None:
    """What simulate.py (and anyone scripting `make dev`) needs: URLs and the dev-only secrets."""
    path.touch(mode=0o600)
    path.write_text(json.dumps(info, indent=2) + "\n")


def banner(lines: list[str]) -> str:
    rule = "=" * min(100, max(len(line) for line in lines) + 4)
    return "\n".join(["", rule, *(f"  {line}" for line in lines), rule, ""])


def seed_demo_settings(owner_url: str) -> None:
    """The demo company grants 3 free days as an incentive, so `simulate.py` shows one."""
    from chalicelib.database_url import parse_database_url
    from chalicelib.db_pool import connect

    conn = connect(parse_database_url(owner_url))
    try:
        conn.run("INSERT INTO creator_settings (company_id, incentive_days, push_experience_id)"
                 " VALUES (:c, 3, :e) ON CONFLICT (company_id) DO NOTHING", c=DEMO_COMPANY, e=DEMO_EXPERIENCE)
    finally:
        conn.close()


def seed_demo_cases(api: str, secret: str) -> None:
    """A few members through the real webhook route: open, recovered, churned, late, and one
    recovered by the card they saved."""
    now = datetime.now(UTC)
    stories = [
        payment_event("payment.failed", company=DEMO_COMPANY, membership="mem_demo_1", user="user_demo_1",
                      at=now - timedelta(hours=2), payment="pay_demo_1", decline_code="expired_card",
                      failure_message="Your card has expired."),
        payment_event("payment.failed", company=DEMO_COMPANY, membership="mem_demo_2", user="user_demo_2",
                      at=now - timedelta(days=3), amount=49.0, payment="pay_demo_2"),
        payment_event("payment.succeeded", company=DEMO_COMPANY, membership="mem_demo_2",
                      user="user_demo_2", at=now - timedelta(days=1), amount=49.0, payment="pay_demo_2"),
        payment_event("payment.failed", company=DEMO_COMPANY, membership="mem_demo_3", user="user_demo_3",
                      at=now - timedelta(days=5), amount=9.99, payment="pay_demo_3"),
        membership_event("membership.cancel_at_period_end_changed", company=DEMO_COMPANY,
                         membership="mem_demo_3", at=now - timedelta(days=4), cancel_at_period_end=True),
        # The bank asks the member to confirm (3-D Secure): the link goes to the payment's
        # recovery_url, and the case is in the authentication class.
        payment_event("payment.requires_action", company=DEMO_COMPANY, membership="mem_demo_4",
                      user="user_demo_4", at=now - timedelta(days=2, hours=3), amount=29.0,
                      payment="pay_demo_4",
                      recovery_url="https://whop.com/checkout/3ds", decline_code="authentication_required",
                      failure_message="Your bank asked you to confirm this payment."),
        # A declined renewal, then the member saves a new card: Rebound attaches it, the
        # fake Whop charges the open payment on it and sends payment.succeeded back (rebound_retry).
        payment_event("payment.failed", company=DEMO_COMPANY, membership="mem_demo_5", user="user_demo_5",
                      at=now - timedelta(days=1, hours=2), amount=15.0, payment="pay_demo_5"),
        card_saved_event(company=DEMO_COMPANY, user="user_demo_5", payment_method=DEMO_CARD,
                         at=now - timedelta(minutes=30)),
    ]
    for msg_id, body in stories:
        req = urllib.request.Request(f"{api}/webhooks/whop", data=body, method="POST",  # noqa: S310
                                     headers=sign(body, msg_id, secret))
        with urllib.request.urlopen(req, timeout=30):  # noqa: S310
            pass


def drain(sqs: Any, queue_url: str, timeout_s: float = 20.0) -> None:
    """Wait (bounded) until the consumer has taken every queued message."""
    deadline = time.monotonic() + timeout_s
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    while time.monotonic() < deadline:
        attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
        if all(attrs.get(n) == "0" for n in names):
            return
        time.sleep(0.2)


class Stack:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.database: localdb.LocalDatabase | None = None

    def spawn(self, name: str, argv: list[str], env: dict[str, str], output: Any = None) -> None:
        self.children.append((name, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=output,
                                                     stderr=subprocess.STDOUT if output else None)))

    def exited(self) -> str | None:
        return next((name for name, child in self.children if child.poll() is not None), None)

    def stop(self) -> None:
        for _, child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
        for _, child in self.children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
        if self.database is not None:
            self.database.stop()


def main() -> int:
    data_dir = Path(os.environ.get("REBOUND_DATA_DIR", ROOT / ".dev")).resolve()
    port = int(os.environ.get("PORT", "8000"))
    moto_port = int(os.environ.get("MOTO_PORT", "8200"))
    fake_port = int(os.environ.get("FAKE_WHOP_PORT", "8100"))
    api = f"http://127.0.0.1:{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"rebound dev: state in {data_dir}")
    stack = Stack()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        stack.database = localdb.start(data_dir / "postgres")
        env = dict(os.environ)
        own_whop = not env.get("WHOP_API_BASE")
        fake = f"http://127.0.0.1:{fake_port}"
        env.update({
            "APP_ENV": env.get("APP_ENV", "development"),
            "DATABASE_URL": stack.database.runtime_url,
            "MIGRATIONS_DATABASE_URL": stack.database.owner_url,
            "PUBLIC_BASE_URL": env.get("PUBLIC_BASE_URL", api),
            "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", "us-east-1"),
            "AWS_ACCESS_KEY_ID": env.get("AWS_ACCESS_KEY_ID", "local"),
            "AWS_SECRET_ACCESS_KEY": env.get("AWS_SECRET_ACCESS_KEY", "local"),
            "AWS_ENDPOINT_URL_SQS": env.get("AWS_ENDPOINT_URL_SQS", f"http://127.0.0.1:{moto_port}"),
            "SCHEDULER_SECRET": env.get("SCHEDULER_SECRET", "dev-scheduler-secret"),
            # chalice local serves a thread per request: they share this many connections (issue 9).
            "DB_POOL_SIZE": env.get("DB_POOL_SIZE", "8"),
            "PYTHONUNBUFFERED": "1",
        })
        if env.get("REBOUND_DEV_METRICS") != "1":
            env.setdefault("POWERTOOLS_METRICS_DISABLED", "true")  # no EMF JSON lines between logs
        for name, value in {**DEV_DEFAULTS, **LOCAL_ENV}.items():
            env.setdefault(name, value)
        env["PUBLIC_BASE_URL"] = env.get("PUBLIC_BASE_URL") or api

        # moto logs a line per queue poll: keep them in a file, out of the developer's terminal.
        moto_log = (data_dir / "moto.log").open("ab")
        stack.spawn("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)], env,
                    output=moto_log)
        wait_http(f"http://127.0.0.1:{moto_port}/moto-api/")
        import boto3

        sqs = boto3.client("sqs", endpoint_url=env["AWS_ENDPOINT_URL_SQS"],
                           region_name=env["AWS_DEFAULT_REGION"],
                           aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        queues = local_sqs.ensure_queues(sqs, "rebound-events", visibility_timeout=10)
        env.setdefault("EVENTS_QUEUE_URL", queues.queue_url)
        env.setdefault("EVENTS_DLQ_URL", queues.dlq_url)

        if own_whop:
            stack.spawn("fake-whop", [sys.executable, "scripts/fake_whop.py", "--port", str(fake_port),
                                      "--api-key", env["WHOP_API_KEY"], "--app-id", env["WHOP_APP_ID"],
                                      "--webhook-secret", env["WHOP_WEBHOOK_SECRET"],
                                      "--signing-key-file", str(data_dir / "fake-whop-signing-key.pem"),
                                      # payment outcomes go back to the app like Whop's webhooks
                                      "--webhook-target", f"{api}/webhooks/whop"], env)
            wait_http(f"{fake}/_fake/state")
            env["WHOP_API_BASE"] = f"{fake}/api/v1"
            env["WHOP_JWKS_URL"] = f"{fake}/.well-known/jwks.json"
            seed_fake_whop(fake, stack.database.owner_url)

        stack.spawn("consumer", [sys.executable, "scripts/local_worker.py", "consumer"], env)
        stack.spawn("scheduler", [sys.executable, "scripts/local_worker.py", "scheduler"], env)
        stack.spawn("chalice", [str(BIN / "chalice"), "local", "--no-autoreload", "--host", "127.0.0.1",
                                "--port", str(port), "--stage", "dev"], env)
        wait_http(f"{api}/api/health")

        marker = data_dir / "demo-seeded"
        if not marker.exists():
            seed_demo_settings(stack.database.owner_url)
            seed_demo_cases(api, env["WHOP_WEBHOOK_SECRET"])
            marker.write_text(datetime.now(UTC).isoformat())
            drain(sqs, queues.queue_url)  # the seed's processing logs come before the banner, not after
            print("rebound dev: demo data seeded (company biz_demo)")

        dashboard = f"{api}/dashboard/{DEMO_COMPANY}"
        lines = [f"Rebound is running (state in {data_dir})", "",
                 f"API          {api}   health: curl -H 'Authorization: Bearer "
                 f"{env['SCHEDULER_SECRET']}' '{api}/api/health?type=database'"]
        info = {"api": api, "company": DEMO_COMPANY, "admin_user": DEMO_ADMIN, "dashboard": dashboard,
                "sqs_endpoint": env["AWS_ENDPOINT_URL_SQS"], "queue_url": queues.queue_url,
                "dlq_url": queues.dlq_url, "scheduler_secret": env["SCHEDULER_SECRET"],
                "webhook_secret": env["WHOP_WEBHOOK_SECRET"]}
        if own_whop:
            token = post_json(f"{fake}/_fake/token", {"user_id": DEMO_ADMIN,
                                                       "expires_in": DEV_TOKEN_LIFETIME_S})["token"]
            info.update({"fake_whop": fake, "token": token})
            lines += [f"Dashboard    {dashboard}?token={token}", "",
                      f"API token    x-whop-user-token: {token}"
                      f"  (valid {DEV_TOKEN_LIFETIME_S // 3600} h, across restarts)",
                      f"Fake Whop    {fake}   what members received: {fake}/_fake/calls"]
        lines += [f"Local SQS    {queues.queue_url}  (DLQ {queues.dlq_url}; moto log: {data_dir}/moto.log)",
                  "", "Try          .venv/bin/python scripts/simulate.py story",
                  "             (a member's payment fails, the reminder tick runs, then they pay)",
                  f"Settings     {data_dir / 'dev.json'} (simulate.py reads it)",
                  "Stop         Ctrl-C stops everything"]
        write_dev_file(data_dir / "dev.json", info)
        print(banner(lines), flush=True)
        while (gone := stack.exited()) is None:
            time.sleep(0.5)
        print(f"rebound dev: {gone} exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
