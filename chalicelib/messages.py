"""Nudge copy and decline classes. Short, one clear call to action: the link to fix the payment.

Variables a template may use (and nothing else — no member name or email is needed):
``{amount}`` the failed renewal ("$19.99" / "19.99 EUR"), ``{days_left}`` whole days left in the
14-day window, ``{link}`` the tracked link, ``{product}`` the product name or "your membership".

**Decline classes** (``decline_class``): each case is classified from the latest failure's event
type, its ``decline_code`` (Whop's normalised codes, and Stripe's raw ones) and, failing those,
its ``failure_message``:

| class            | when                                                          | default copy          |
|------------------|---------------------------------------------------------------|-----------------------|
| ``authentication`` | ``payment.requires_action``, ``authentication_required``,    | "confirm with your    |
|                  | 3-D Secure codes                                              | bank" (the payment's  |
|                  |                                                               | ``recovery_url``)     |
| ``card_hard``    | the card cannot work again: expired, lost/stolen, invalid     | "update your card"    |
|                  | number, closed account, restricted, permanently refused, …    |                       |
| ``card_soft``    | may work on retry: insufficient funds, generic decline,       | a gentler message;    |
|                  | processing error, try again later, …                          | reminders a day later |
| ``unknown``      | anything else                                                 | the neutral copy      |

**Creator copy** (experiment variants) is plain text: placeholders are checked when the
experiment is created (``check_copy``), and when rendered into a DM (markdown) every markdown
character of the creator's text and of the product name is escaped, so a variant can never
inject links, images or formatting into a member's DM.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from chalicelib.models import Case, DeclineClass, EventType, currency_decimals, unsafe_text

_SYMBOLS = {"usd": "$", "cad": "CA$", "aud": "A$", "gbp": "£", "eur": "€"}
DEFAULT_PRODUCT = "your membership"
PRODUCT_MAX_CHARS = 60  # a long product name must not push a push over its limit

PLACEHOLDERS: Final = frozenset({"amount", "days_left", "link", "product"})
# Rebound's limits for creator copy (templates, before filling in placeholders), kept well under
# what Whop accepts so the rendered text (link ~80 chars, product ≤ 60) still fits.
MAX_PUSH_TITLE = 80
MAX_PUSH_BODY = 300
MAX_DM_BODY = 1500


@dataclass(frozen=True)
class Copy:
    title: str  # push title
    push: str  # push body (plain text, carries the link)
    dm: str  # DM body (markdown)


@dataclass(frozen=True)
class VariantCopy:
    """An experiment variant's copy; a part left None uses the default copy."""

    push_title: str | None = None
    push_body: str | None = None
    dm_body: str | None = None


# --- decline classes ------------------------------------------------------------------------------

_AUTHENTICATION_CODES: Final = frozenset({
    "authentication_required", "three_d_secure_required", "requires_action", "pin_required",
    "pin_required_as", "three_d_secure_canceled", "three_d_secure_timeout",
    "three_d_secure_generic_error", "three_d_secure_failed", "three_d_secure_too_many_attempts",
    "three_d_secure_rejected_by_bank", "offline_pin_required", "online_or_offline_pin_required",
})
_HARD_CODES: Final = frozenset({
    # Whop's normalised codes
    "lost_card", "stolen_card", "expired_card", "invalid_card_number", "invalid_cvc",
    "invalid_cvc_or_expiration", "card_not_supported", "currency_not_supported", "invalid_account",
    "restricted_card", "regulatory_blocked", "transaction_not_permitted", "transaction_stopped",
    "card_type_not_supported", "issuer_not_found", "closed_account", "invalid_expiry_month",
    "invalid_expiry_year", "invalid_expiry", "blocked_by_cardholder", "transaction_not_allowed",
    "three_d_secure_invalid_card_number", "three_d_secure_card_not_enrolled",
    "three_d_secure_reported_lost_or_stolen", "bank_account_not_found", "bank_account_closed",
    "bank_account_frozen", "bank_invalid_routing_number", "bank_non_transaction_account",
    "bank_authorization_revoked", "bank_payment_stopped", "bank_not_authorized",
    "bank_account_holder_deceased", "bank_regulatory_blocked", "bank_details_invalid",
    "sepa_invalid_iban", "sepa_no_mandate", "sepa_mandate_data_invalid", "sepa_refused_by_customer",
    "no_accounts", "invalid_country", "invalid_card_holder_name",
    # Stripe's raw decline codes
    "incorrect_number", "invalid_number", "incorrect_cvc", "pickup_card", "revocation_of_authorization",
    "revocation_of_all_authorizations", "stop_payment_order", "not_permitted", "security_violation",
    "do_not_honor_permanent", "account_closed", "no_account", "invalid_expiry_date",
})
_SOFT_CODES: Final = frozenset({
    "insufficient_funds", "generic_decline", "processing_error", "card_velocity_exceeded",
    "contact_issuer", "card_declined_by_issuer", "bank_declined", "issuer_unavailable",
    "cannot_authorize", "provider_declined", "reenter_transaction", "withdrawal_count_limit_exceeded",
    "issuer_error", "try_again_later", "bank_insufficient_funds", "bank_processing_error",
    "bank_generic_decline", "sepa_generic_decline", "duplicate_transaction", "invalid_amount",
    "transaction_cancelled", "card_declined", "do_not_honor", "issuer_not_available",
    "approve_with_id", "call_issuer", "no_action_taken", "not_enough_funds", "do_not_try_again_later",
})
# failure_message fallbacks, checked in this order (authentication first: "authentication
# required" also says "declined" on some processors).
_MESSAGE_HINTS: Final[tuple[tuple[DeclineClass, re.Pattern[str]], ...]] = (
    ("authentication", re.compile(r"authenticat|3-?d[ -]?secure|\b3ds\b|verify|confirm", re.I)),
    ("card_hard", re.compile(r"expired|lost|stolen|invalid (card )?number|incorrect (card )?number|"
                             r"number is (invalid|incorrect)|not supported|closed", re.I)),
    ("card_soft", re.compile(r"insufficient|declined|processing error|try again|limit", re.I)),
)


def decline_class(decline_code: str | None, failure_message: str | None,
                  failure_type: str | None = None) -> DeclineClass:
    """The class of a failure (table in the module doc); pure, so the CSV can be re-derived."""
    if failure_type == EventType.PAYMENT_REQUIRES_ACTION:
        return "authentication"
    code = (decline_code or "").strip().lower().replace("-", "_").replace(" ", "_")
    if code in _AUTHENTICATION_CODES:
        return "authentication"
    if code in _HARD_CODES:
        return "card_hard"
    if code in _SOFT_CODES:
        return "card_soft"
    for cls, hint in _MESSAGE_HINTS:
        if failure_message and hint.search(failure_message):
            return cls
    return "unknown"


def case_decline_class(case: Case) -> DeclineClass:
    return decline_class(case.decline_code, case.failure_reason, case.failure_type)


# --- default copy ---------------------------------------------------------------------------------

_T0: dict[DeclineClass, Copy] = {
    "unknown": Copy(
        title="Your payment didn't go through",
        push="Update your card to keep {product}. It takes a minute. {link}",
        dm="Your renewal payment of {amount} for {product} didn't go through.\n\n"
           "**[Update your payment method]({link})** to keep your access. "
           "You have {days_left} days.",
    ),
    "card_hard": Copy(
        title="Your card needs updating",
        push="The card on file for {product} no longer works. Update it to keep access. {link}",
        dm="The card on file for {product} can't be charged any more, so your renewal of {amount} "
           "didn't go through.\n\n**[Update your card]({link})** to keep your access. "
           "You have {days_left} days.",
    ),
    "card_soft": Copy(
        title="A small hiccup with your renewal",
        push="Your {amount} renewal for {product} didn't go through this time. {link}",
        dm="Your renewal of {amount} for {product} didn't go through this time. It happens, and "
           "it's easy to fix.\n\n**[Check your payment]({link})** whenever suits you in the next "
           "{days_left} days.",
    ),
    "authentication": Copy(
        title="Your bank needs you to confirm",
        push="Confirm your {amount} payment for {product} with your bank. {link}",
        dm="Your bank asked you to confirm the {amount} renewal for {product}.\n\n"
           "**[Confirm with your bank]({link})** to keep your access. You have {days_left} days.",
    ),
}
_REMINDER: dict[DeclineClass, Copy] = {
    "unknown": Copy(
        title="Still time to keep your access",
        push="{days_left} days left to update your payment for {product}. {link}",
        dm="Reminder: your payment of {amount} for {product} still needs attention.\n\n"
           "**[Fix your payment]({link})** — {days_left} days left before access ends.",
    ),
    "card_hard": Copy(
        title="Your card still needs updating",
        push="{days_left} days left to update your card for {product}. {link}",
        dm="Reminder: the card on file for {product} still can't be charged.\n\n"
           "**[Update your card]({link})** — {days_left} days left before access ends.",
    ),
    "card_soft": Copy(
        title="Still time to keep your access",
        push="Your {product} renewal is still open: {days_left} days left. {link}",
        dm="Just a reminder: your {amount} renewal for {product} is still open.\n\n"
           "**[Check your payment]({link})** — {days_left} days left.",
    ),
    "authentication": Copy(
        title="Your bank is still waiting",
        push="Confirm your {product} payment with your bank: {days_left} days left. {link}",
        dm="Reminder: your bank is still waiting for you to confirm the {amount} renewal for "
           "{product}.\n\n**[Confirm with your bank]({link})** — {days_left} days left.",
    ),
}
_MANUAL = Copy(
    title="Action needed on your membership",
    push="Your payment for {product} needs attention. {link}",
    dm="Your payment of {amount} for {product} needs attention.\n\n"
       "**[Update your payment method]({link})** to keep your access.",
)



def default_copy(template: str, cls: DeclineClass = "unknown") -> Copy:
    """The default copy of a template ("t0", "reminder", "manual") for a decline class."""
    if template == "t0":
        return _T0[cls]
    if template == "reminder":
        return _REMINDER[cls]
    return _MANUAL


# Soft declines often clear on their own (payday, a retry by Whop): by default the first
# reminder waits a day longer for them. Used when the creator kept the default offsets.
SOFT_FIRST_REMINDER_DELAY_DAYS = 1


# --- rendering ------------------------------------------------------------------------------------


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


_MARKDOWN = re.compile(r"([\\`*_\[\]<>#~|!])")


def escape_markdown(text: str) -> str:
    """Backslash-escape markdown punctuation so the text shows as typed (CommonMark escapes)."""
    return _MARKDOWN.sub(r"\\\1", text)


def product_label(product: str | None) -> str:
    name = " ".join((product or "").split())  # no newlines or runs of spaces from a product title
    if not name:
        return DEFAULT_PRODUCT
    return name if len(name) <= PRODUCT_MAX_CHARS else name[:PRODUCT_MAX_CHARS - 1].rstrip() + "…"


def _fill(template: str, values: dict[str, str], *, markdown: bool) -> str:
    """Fill a checked template. For a DM, the template's literal text and every value but the link
    are escaped: the copy is plain text, whoever wrote it."""
    out: list[str] = []
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        out.append(escape_markdown(literal) if markdown else literal)
        if name is not None:
            value = values[name]
            out.append(escape_markdown(value) if markdown and name != "link" else value)
    return "".join(out)


def render(template: str, case: Case, link: str, now: datetime, product: str | None = None,
           variant: VariantCopy | None = None) -> Copy:
    """The copy of one message: the variant's parts where it has them, else the default copy of
    the case's decline class."""
    base = default_copy(template, case.decline_class)
    values = {"amount": format_amount(case.amount_minor, case.currency),
              "days_left": str(days_left(case, now)), "link": link, "product": product_label(product)}
    dm_values = {**values, "product": escape_markdown(values["product"])}
    variant = variant or VariantCopy()
    return Copy(
        title=_fill(variant.push_title, values, markdown=False) if variant.push_title
        else base.title.format(**values),
        push=_fill(variant.push_body, values, markdown=False) if variant.push_body
        else base.push.format(**values),
        dm=_fill(variant.dm_body, values, markdown=True) if variant.dm_body
        else base.dm.format(**dm_values))


# --- checking creator copy ------------------------------------------------------------------------

def check_copy(text: str, *, field: str, max_chars: int, requires_link: bool,
               single_line: bool = False) -> str | None:
    """Why ``text`` is not acceptable creator copy (a message for the 400), or None."""
    if not text.strip():
        return "must not be empty"
    if len(text) > max_chars:
        return f"at most {max_chars} characters (has {len(text)})"
    if single_line and ("\n" in text or "\r" in text):
        return "control characters are not allowed (one line only)"
    unsafe = unsafe_text(text, multiline=True)
    if unsafe is not None:
        return unsafe
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        return ("unbalanced braces: placeholders are {amount}, {days_left}, {link}, {product}; "
                "write {{ or }} for a literal brace")
    names: list[str] = []
    for _literal, name, spec, conv in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conv:
            shown = "{" + name + ("!" + conv if conv else "") + (":" + spec if spec else "") + "}"
            return f"unknown placeholder {shown}: use {{amount}}, {{days_left}}, {{link}} or {{product}}"
        names.append(name)
    if requires_link and "link" not in names:
        return "must contain {link} (the member's tracked link)"
    return None
