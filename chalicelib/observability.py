"""The one place the logger and metrics are created (Powertools).

Tenant ids go into log keys and metric metadata, never metric dimensions (cardinality).
Nothing here logs payloads: callers pass ids and counts only. Logs are Powertools' JSON, except
outside Lambda with ``REBOUND_LOG_FORMAT=text`` (what `make dev` sets): one readable line each.
"""

from __future__ import annotations

import logging
import os
import warnings
from datetime import datetime

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "rebound")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Rebound")

# Handlers that record no metric (health checks) are normal, not worth a warning line each.
warnings.filterwarnings("ignore", message="No application metrics to publish")



class LocalFormatter(LambdaPowertoolsFormatter):
    """One readable line per record for `make dev`'s terminal: local time, level,
    message, then the record's own keys (ids, counts, outcomes). An exception adds its class
    only, as the JSON logs do for errors they carry. Lambda always keeps the JSON formatter."""

    _FRAME = frozenset({"level", "location", "message", "timestamp", "service", "sampling_rate", "cold_start",
                        "function_name", "function_memory_size", "function_arn", "function_request_id",
                        "xray_trace_id", "exception", "exception_name", "exception_notes", "stack_trace"})

    def format(self, record: logging.LogRecord) -> str:
        keys = self._extract_log_keys(log_record=record)
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        line = f"{when} {record.levelname:<7} {self._extract_log_message(log_record=record)}"
        extras = " ".join(f"{k}={v}" for k, v in keys.items() if k not in self._FRAME and v is not None)
        if extras:
            line += f"  {extras}"
        if record.exc_info and record.exc_info[0] is not None:
            line += f"  error={record.exc_info[0].__name__}"
        return line


def _local_text_logs() -> bool:
    return os.environ.get("REBOUND_LOG_FORMAT") == "text" and not os.environ.get("AWS_LAMBDA_FUNCTION_NAME")


logger = Logger(service=SERVICE, logger_formatter=LocalFormatter() if _local_text_logs() else None)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

# No Tracer: importing the X-Ray SDK costs ~200 ms of cold start on every webhook; structured
# logs (correlated by request and webhook id) and EMF metrics cover what we need.
__all__ = ["MetricUnit", "count", "logger", "measure", "metrics"]


def measure(name: str, value: float, unit: MetricUnit = MetricUnit.Count) -> None:
    """Add a value to a metric (flushed by the log_metrics middleware at the end of a handler).
    With metrics off (``POWERTOOLS_METRICS_DISABLED``: make dev, chaos, the load test) nothing is
    kept: Powertools would keep collecting, since its flush prints nothing and so never clears,
    and it prints a set anyway once a metric holds 100 values (its EMF limit)."""
    if not is_metrics_disabled():
        metrics.add_metric(name=name, unit=unit, value=value)


def count(name: str, value: float = 1) -> None:
    """Add to a counter metric."""
    measure(name, value)
