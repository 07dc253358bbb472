"""Time budgets: how long one Whop call may take, and what each caller leaves for it.

Kept apart from ``chalicelib.whop`` (which imports the Whop SDK and httpx) so that ``app.py`` can
read them without putting the SDK on the webhook function's cold start.

- ``SHARED_PROFILE``: every caller's but the HTTP-triggered tick's. 2 × (3 s connect + 8 s read)
  + 4 s of backoff = 26 s at worst, under API Gateway's 29 s for a creator request's one call.
- ``SHORT_PROFILE``: the HTTP-triggered tick's. It answers within API Gateway's 29 s after a
  budget of its own (app.py), so its calls get one attempt and shorter timeouts: 7 s at worst.
"""

from __future__ import annotations

from collections.abc import Mapping

SHARED_PROFILE: dict[str, float] = {"connect_timeout_s": 3.0, "read_timeout_s": 8.0,
                                    "max_attempts": 2, "max_total_sleep_s": 4.0}
SHORT_PROFILE: dict[str, float] = {"connect_timeout_s": 2.0, "read_timeout_s": 5.0,
                                   "max_attempts": 1, "max_total_sleep_s": 0.0}
# API Gateway's integration timeout for a REST API (a Lambda may run longer; the caller is gone).
API_GATEWAY_TIMEOUT_S = 29.0


def worst_case_call_s(profile: Mapping[str, float]) -> float:
    """The longest one call can take under ``profile``: every attempt times out, and every
    backoff sleep allowed is slept."""
    per_attempt = profile["connect_timeout_s"] + profile["read_timeout_s"]
    return per_attempt * profile["max_attempts"] + profile["max_total_sleep_s"]
