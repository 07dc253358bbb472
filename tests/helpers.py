"""Test helpers: the webhook builders shared with scripts/simulate.py, and a concurrency runner."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from scripts.whop_payloads import SECRET, iso, membership_event, payment_event, sign

__all__ = ["SECRET", "iso", "membership_event", "payment_event", "run_concurrently", "sign"]

T = TypeVar("T")


def run_concurrently(fn: Callable[[], T], n: int, after: Callable[[], None] | None = None) -> list[T]:
    """Run ``fn`` in ``n`` threads released together; re-raise the first error, else the results.

    ``after`` runs in each thread when it is done (e.g. closing its thread-local connection).
    """
    barrier = threading.Barrier(n)
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(fn())
        except BaseException as exc:
            errors.append(exc)
        finally:
            if after is not None:
                after()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
