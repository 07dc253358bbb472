"""Send signed Whop webhook scenarios to a running Rebound (default: `make dev` on :8000).

  python scripts/simulate.py failure  --membership mem_42 [--days-ago 3] [--recovery-url URL]
  python scripts/simulate.py recovery --membership mem_42          # the member pays
  python scripts/simulate.py churn    --membership mem_42          # the member cancels
  python scripts/simulate.py story                                 # failure, tick, recovery
  python scripts/simulate.py tick                                  # run the reminder tick now
  python scripts/simulate.py card-updated --user user_42           # the member saves a new card

Webhooks are signed like Whop signs them (Standard Webhooks, the ws_ secret's literal bytes).
With the bundled fake Whop running, the membership is registered there first, so nudges,
incentives and links work; check what the member received at <fake>/_fake/calls.
`card-updated` sends a signed ``setup_intent.succeeded``: Rebound attaches the card to
the member's membership with an open case, the fake Whop charges the open payment on it and sends
the ``payment.succeeded`` back (``--declines`` makes the new card decline instead).

Where `make dev` runs (its ports, secrets, fake Whop) is read from the dev.json it writes in its
data folder (${REBOUND_DATA_DIR:-.dev}); REBOUND_URL, FAKE_WHOP_URL, SCHEDULER_SECRET and
WHOP_WEBHOOK_SECRET, or the flags, override it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.whop_payloads import SECRET, card_saved_event, membership_event, payment_event, sign  # noqa: E402


class NotRunning(Exception):
    """Nothing answers at ``origin``: make dev is not running there."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        super().__init__(self.origin)


def dev_file() -> Path:
    return Path(os.environ.get("REBOUND_DATA_DIR", ROOT / ".dev")) / "dev.json"


def not_running_hint(exc: NotRunning) -> str:
    """One line: what is wrong and what to do (it used to be a URLError traceback)."""
    path = dev_file()
    where = (f"read from {path}: that make dev is no longer running" if path.exists() else
             f"no dev.json in {path.parent}, so the default address (make dev writes it there; "
             "run this with the same REBOUND_DATA_DIR and PORT as make dev)")
    return (f"simulate: nothing answers at {exc.origin} ({where}). Start it with `make dev` in another "
            "terminal, wait for its banner, then run this again.")


def dev_info() -> dict[str, str]:
    """What the running `make dev` wrote about itself, or nothing when it never ran."""
    path = dev_file()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - 127.0.0.1 by default
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, OSError):
        raise NotRunning(url) from None


def register_membership(fake: str | None, membership: str, company: str, user: str,
                        amount: float = 19.99) -> None:
    """The membership and its open payment at the fake Whop (so a retry or an attach has one)."""
    if not fake:
        return
    body = json.dumps({"id": membership, "company_id": company, "user_id": user}).encode()
    _post(f"{fake}/_fake/memberships", body, {"content-type": "application/json"})
    body = json.dumps({"id": payment_id(membership), "company_id": company, "membership_id": membership,
                       "user_id": user, "amount_minor": round(amount * 100)}).encode()
    _post(f"{fake}/_fake/payments", body, {"content-type": "application/json"})


def payment_id(membership: str) -> str:
    return f"pay_{membership}"


def register_card(fake: str | None, method: str, company: str, user: str, outcome: str) -> None:
    if not fake:
        return
    body = json.dumps({"payment_method_id": method, "company_id": company, "user_id": user,
                       "outcome": outcome}).encode()
    _post(f"{fake}/_fake/payment_methods", body, {"content-type": "application/json"})


def send(base: str, pair: tuple[str, bytes], secret: str) -> None:
    msg_id, body = pair
    status, text = _post(f"{base}/webhooks/whop", body, sign(body, msg_id, secret))
    print(f"{json.loads(body)['type']:<45} {msg_id} -> {status} {text.strip()}")


def _get_json(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - 127.0.0.1 by default
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, None
    except (urllib.error.URLError, OSError):
        raise NotRunning(url) from None


def open_case_of(base: str, fake: str | None, admin: str | None, company: str,
                 membership: str) -> bool | None:
    """Whether the membership has an open case (through the creator API, with a token the fake
    Whop mints); None when that cannot be asked (no fake Whop, or the app is not answering)."""
    if not fake or not admin:
        return None
    status, text = _post(f"{fake}/_fake/token", json.dumps({"user_id": admin}).encode(),
                         {"content-type": "application/json"})
    if status != 200:
        return None
    token = json.loads(text)["token"]
    query = urllib.parse.urlencode({"q": membership, "status": "open", "limit": "100"})
    status, page = _get_json(f"{base}/api/companies/{company}/cases?{query}", {"x-whop-user-token": token})
    if status != 200 or not isinstance(page, dict):
        return None
    return any(item.get("membership_id") == membership for item in page.get("items", []))


def tick(base: str, secret: str | None) -> None:
    if not secret:
        print("tick: no SCHEDULER_SECRET (start `make dev` first, or set it); the scheduler loop "
              "runs the tick on its own every SCHEDULER_EVERY_S (30 s)")
        return
    status, text = _post(f"{base}/api/scheduler/reminders", b"",
                         {"authorization": f"Bearer {secret}", "content-type": "application/json"})
    print(f"reminder tick -> {status} {text.strip()}")


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except NotRunning as exc:
        print(not_running_hint(exc), file=sys.stderr)
        return 2


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["failure", "recovery", "churn", "story", "tick", "card-updated"])
    dev = dev_info()
    # Without dev.json (make dev not started yet), the same PORT / FAKE_WHOP_PORT make dev uses.
    api = dev.get("api", f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
    fake = dev.get("fake_whop", f"http://127.0.0.1:{os.environ.get('FAKE_WHOP_PORT', '8100')}")
    parser.add_argument("--base", default=os.environ.get("REBOUND_URL", api))
    parser.add_argument("--fake-whop", default=os.environ.get("FAKE_WHOP_URL", fake))
    parser.add_argument("--company", default=dev.get("company", "biz_demo"))
    parser.add_argument("--membership", default="mem_sim_1")
    parser.add_argument("--user", default="user_sim_1")
    parser.add_argument("--days-ago", type=float, default=0.0, help="when the payment failed")
    parser.add_argument("--recovery-url", default=None)
    parser.add_argument("--amount", type=float, default=19.99)
    parser.add_argument("--payment-method", default=None, help="card-updated: the saved method's id")
    parser.add_argument("--declines", action="store_true", help="card-updated: the new card declines too")
    args = parser.parse_args(argv)
    secret = os.environ.get("WHOP_WEBHOOK_SECRET", dev.get("webhook_secret", SECRET))
    scheduler_secret = os.environ.get("SCHEDULER_SECRET", dev.get("scheduler_secret"))
    now = datetime.now(UTC)
    ids: dict[str, Any] = {"company": args.company, "membership": args.membership}
    if args.scenario in ("failure", "story"):
        register_membership(args.fake_whop, args.membership, args.company, args.user, args.amount)
        send(args.base, payment_event("payment.failed", **ids, user=args.user,
                                      at=now - timedelta(days=args.days_ago), amount=args.amount,
                                      recovery_url=args.recovery_url,
                                      payment=payment_id(args.membership)), secret)
    if args.scenario in ("tick", "story"):
        tick(args.base, scheduler_secret)
    if args.scenario in ("recovery", "story"):
        send(args.base, payment_event("payment.succeeded", **ids, user=args.user, at=now,
                                      amount=args.amount, payment=payment_id(args.membership)), secret)
    if args.scenario == "card-updated":
        method = args.payment_method or f"payt_{args.user}_{int(now.timestamp())}"
        register_card(args.fake_whop, method, args.company, args.user, "failed" if args.declines else "paid")
        send(args.base, card_saved_event(company=args.company, user=args.user, payment_method=method,
                                         at=now), secret)
    if args.scenario == "churn":
        if open_case_of(args.base, args.fake_whop, dev.get("admin_user"), args.company,
                        args.membership) is False:
            print(f"churn: {args.membership} has no open case (no failed payment recorded), so a "
                  "cancellation changes nothing Rebound shows. Start one first:\n"
                  f"  .venv/bin/python scripts/simulate.py failure --membership {args.membership}",
                  file=sys.stderr)
            return 1
        send(args.base, membership_event("membership.cancel_at_period_end_changed", **ids, at=now,
                                         cancel_at_period_end=True), secret)
    if "dashboard" in dev and args.scenario != "tick":
        print(f"see it: {dev['dashboard']}?token={dev.get('token', '')}#view=cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
