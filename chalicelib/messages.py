"""Nudge copy. Short, one clear call to action: the link to fix the payment.

Variables a template may use (and nothing else — no member name or email is needed):
``{amount}`` the failed renewal ("$19.99" / "19.99 EUR"), ``{days_left}`` whole days left in the
14-day window, ``{link}`` the tracked link, ``{product}`` the product name or "your membership".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from chalicelib.models import Case, currency_decimals

_SYMBOLS = {"usd": "$", "cad": "CA$", "aud": "A$", "gbp": "£", "eur": "€"}


@dataclass(frozen=True)
class Copy:
    title: str  # push title
    push: str  # push body
    dm: str  # DM body (markdown)


TEMPLATES: dict[str, Copy] = {
    "t0": Copy(
        title="Your payment didn't go through",
        push="Update your card to keep {product}. It takes a minute.",
        dm="Your renewal payment of {amount} for {product} didn't go through.\n\n"
           "**[Update your payment method]({link})** to keep your access. "
           "You have {days_left} days.",
    ),
    "reminder": Copy(
        title="Still time to keep your access",
        push="{days_left} days left to update your payment for {product}.",
        dm="Reminder: your payment of {amount} for {product} still needs attention.\n\n"
           "**[Fix your payment]({link})** — {days_left} days left before access ends.",
    ),
    "manual": Copy(
        title="Action needed on your membership",
        push="Your payment for {product} needs attention.",
        dm="Your payment of {amount} for {product} needs attention.\n\n"
           "**[Update your payment method]({link})** to keep your access.",
    ),
}


def format_amount(amount_minor: int | None, currency: str | None) -> str:
    if amount_minor is None or not currency:
        return "your renewal"
    decimals = currency_decimals(currency)
    number = f"{amount_minor / 10 ** decimals:,.{decimals}f}"
    symbol = _SYMBOLS.get(currency)
    return f"{symbol}{number}" if symbol else f"{number} {currency.upper()}"


def days_left(case: Case, now: datetime) -> int:
    seconds = (case.window_ends_at - now).total_seconds()
    return max(0, int(seconds // 86400) + (1 if seconds % 86400 else 0))


def render(template: str, case: Case, link: str, now: datetime,
           product: str | None = None) -> Copy:
    copy = TEMPLATES[template]
    values = {"amount": format_amount(case.amount_minor, case.currency),
              "days_left": days_left(case, now), "link": link,
              "product": product or "your membership"}
    return Copy(title=copy.title.format(**values), push=copy.push.format(**values),
                dm=copy.dm.format(**values))
