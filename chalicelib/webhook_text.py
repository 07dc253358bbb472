"""What of Whop's text a webhook may keep: ids, short texts and URLs cleaned (no control
characters, lone surrogates or NUL; bounded lengths), the card network's free-text failure
message with anything that could identify the card or the member replaced, and the stored,
PII-free form of an event (``minimal_payload``) with its inverse. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from chalicelib.models import WhopEvent, clean_text

FAILURE_MESSAGE_MAX: Final = 500
ID_MAX: Final = 255
_TEXT_MAX: Final = 2048


def minimal_payload(event: WhopEvent) -> dict[str, Any]:
    """The stored, PII-free form of an event (what the ``events`` table keeps). A field only a
    saved card carries is left out of the other events, so their stored form stays as it was."""
    unused = {"payment_method_id"} if event.payment_method_id is None else None
    return event.model_dump(mode="json", exclude=unused)


def event_from_payload(payload: Mapping[str, Any]) -> WhopEvent:
    """Inverse of ``minimal_payload``."""
    return WhopEvent.model_validate(dict(payload))


def first_id(*values: Any) -> str | None:
    """The first of ``values`` that is a usable id: a string, cleaned, 1 to 255 characters."""
    for value in values:
        if isinstance(value, str):
            value = clean_text(value).strip()
            if 0 < len(value) <= ID_MAX:
                return value
    return None


def nested_id(value: Any) -> Any:
    return value.get("id") if isinstance(value, Mapping) else None


def id_ref(value: Any) -> str | None:
    """An id given either as a plain string or as an object ``{"id": ...}``."""
    return first_id(value, nested_id(value))


# failure_message is free text from the card network: the fold needs it, for failures
# only, as the case's failure reason and a hint of its decline class. Nothing in it may identify
# the card or the member: e-mail addresses, and any run of four or more digits (a card number,
# an expiry, a phone number; spaces, dots, dashes, slashes and brackets between them), are
# replaced before it is queued or stored. A decline code, or amount, in it may go with them.
_EMAIL = re.compile(r"[^\s@,;:()<>\[\]\"']+@[^\s@,;:()<>\[\]\"']+")
_DIGIT_RUN = re.compile(r"\+?\(?\d[\d\s()./-]*\d")


def failure_text(text: str) -> str:
    """``text`` without e-mail addresses or long digit runs (each replaced by a placeholder)."""
    text = _EMAIL.sub("[email]", text)
    return _DIGIT_RUN.sub(lambda m: "[number]" if sum(ch.isdigit() for ch in m.group()) >= 4 else m.group(),
                          text)


def short_text(value: Any, limit: int) -> str | None:
    """Whop's text cleaned (``models.clean_text``) and cut at ``limit``; None when nothing is left."""
    if isinstance(value, str) and clean_text(value).strip():
        return clean_text(value).strip()[:limit]
    return None


def clean_url(value: Any) -> str | None:
    # A URL with a control character or space is not one we would ever redirect a member to.
    if (isinstance(value, str) and value.startswith(("https://", "http://")) and len(value) <= _TEXT_MAX
            and value.isprintable() and " " not in value):
        return value
    return None
