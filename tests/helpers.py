"""Test helpers: the webhook builders shared with scripts/simulate.py."""

from scripts.whop_payloads import SECRET, iso, membership_event, payment_event, sign

__all__ = ["SECRET", "iso", "membership_event", "payment_event", "sign"]
