"""A circuit breaker per Whop endpoint, for the effects executor.

With Whop answering 429 to everything, a tick used to make one request per owed row (5,000 in
one report), every one refused, and each refusal made the rate limit longer. Now, after
``THRESHOLD`` answers in a row that say "Whop is in trouble" (429, 5xx, 408, a timeout or a
dropped connection, or our key refused), the executor stops calling that endpoint:

| state     | what a send to the endpoint does                                                  |
|-----------|-----------------------------------------------------------------------------------|
| closed    | goes to Whop; trouble counts towards THRESHOLD, any other answer resets the count  |
| open      | does not go: its row stays owed (pending) until the breaker's reopening time       |
| half-open | the open time has passed: ONE send goes as a probe (others wait); its trouble      |
|           | reopens with a doubled backoff, any other answer closes                             |

The open time is the Retry-After of the answer that opened it when Whop gave one, else a backoff
(30 s doubling per reopening, at most 15 minutes). Times are the executor's ``now`` (the
database's time at the edges), so a tick on a simulated clock behaves like a real one.

Choice of scope: one breaker per process (``get_breaker``), shared by every executor thread in
it under one lock, so concurrent executors of one process see the same state and a half-open
endpoint admits exactly one probe. Nothing is shared across Lambda instances, on purpose: the
breaker only saves requests, it guards nothing. Correctness lives in the ledger (a row stays
owed; its idempotency key stops doubles), so N instances cost at most N probes per backoff, and
no shared counter (a database round trip per send, or a new dependency) is worth that.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from chalicelib.whop import MAX_RETRY_AFTER_S, WhopResult

THRESHOLD = 5
BASE_BACKOFF = timedelta(seconds=30)
MAX_BACKOFF = timedelta(minutes=15)
# A probe that never reports (its executor died) frees the slot after this long.
PROBE_LEASE = timedelta(minutes=1)
TROUBLE = frozenset({"rate_limited", "unavailable", "credentials"})


def endpoint_of(kind: str, channel: str | None) -> str:
    """The Whop endpoint a ledger row's send calls (a new kind is its own endpoint)."""
    if kind == "incentive":
        return "memberships.extend"
    if channel == "push":
        return "notifications"
    if channel == "dm":
        return "messages"
    return kind


@dataclass(frozen=True)
class Admission:
    until: datetime | None  # None: the call may go; else not before then
    probe: bool = False  # this call is the half-open probe


@dataclass
class _Endpoint:
    failures: int = 0  # trouble in a row while closed
    reopenings: int = 0  # times it opened without a good answer in between (the backoff doubles)
    opened_at: datetime | None = None
    open_until: datetime | None = None
    probe_until: datetime | None = None  # half-open with a probe in flight until then


class CircuitBreaker:
    def __init__(self, *, threshold: int = THRESHOLD, base_backoff: timedelta = BASE_BACKOFF,
                 max_backoff: timedelta = MAX_BACKOFF, probe_lease: timedelta = PROBE_LEASE) -> None:
        self.threshold = threshold
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.probe_lease = probe_lease
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}

    def admit(self, endpoint: str, now: datetime) -> Admission:
        """May a call go to ``endpoint`` now? When half-open, the first caller is the probe and
        every other one waits for its answer (or for PROBE_LEASE, should it never come)."""
        with self._lock:
            state = self._endpoints.get(endpoint)
            if state is None or state.open_until is None or state.opened_at is None:
                return Admission(None)
            if state.opened_at <= now < state.open_until:
                return Admission(state.open_until)
            # Half-open (or the clock went back past the opening: a probe finds out).
            if state.probe_until is not None and now < state.probe_until:
                return Admission(state.probe_until)
            state.probe_until = now + self.probe_lease
            return Admission(None, probe=True)

    def resting_until(self, endpoint: str, now: datetime) -> datetime | None:
        """Asked again just before a call admitted a moment ago (not the probe): the time until
        which the endpoint rests if another executor has tripped it since, else None."""
        with self._lock:
            state = self._endpoints.get(endpoint)
            if state is None or state.open_until is None or state.opened_at is None:
                return None
            if state.opened_at <= now < state.open_until:
                return state.open_until
            return None

    def record(self, endpoint: str, now: datetime, result: WhopResult) -> None:
        """What Whop answered a call the breaker let through."""
        with self._lock:
            if result.ok or result.cause not in TROUBLE:
                self._endpoints.pop(endpoint, None)  # Whop is answering: closed, count reset
                return
            state = self._endpoints.setdefault(endpoint, _Endpoint())
            state.failures += 1
            if state.open_until is None:
                if state.failures >= self.threshold:
                    self._open(state, now, result)
            elif state.probe_until is not None:
                self._open(state, now, result)  # the probe found Whop still in trouble
            # Else a call that set out before the breaker opened: it is open already.

    def _open(self, state: _Endpoint, now: datetime, result: WhopResult) -> None:
        state.reopenings += 1
        backoff = min(self.base_backoff * 2 ** min(state.reopenings - 1, 20), self.max_backoff)
        if result.retry_after_s is not None and result.retry_after_s == result.retry_after_s:  # not NaN
            backoff = timedelta(seconds=min(max(result.retry_after_s, 1.0), MAX_RETRY_AFTER_S))
        state.opened_at, state.open_until, state.probe_until = now, now + backoff, None

    def reset(self) -> None:
        with self._lock:
            self._endpoints.clear()


_breaker = CircuitBreaker()


def get_breaker() -> CircuitBreaker:
    """The process-wide breaker every executor of this process shares."""
    return _breaker
