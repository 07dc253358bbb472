"""The one place the logger and metrics are created (Powertools).

Tenant ids go into log keys and metric metadata, never metric dimensions (cardinality).
Nothing here logs payloads: callers pass ids and counts only.
"""

from __future__ import annotations

import os
import warnings

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "rebound")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Rebound")

# Handlers that record no metric (health checks) are normal, not worth a warning line each.
warnings.filterwarnings("ignore", message="No application metrics to publish")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

# No Tracer: importing the X-Ray SDK costs ~200 ms of cold start on every webhook; structured
# logs (correlated by request and webhook id) and EMF metrics cover what we need.
__all__ = ["MetricUnit", "count", "logger", "metrics"]


def count(name: str, value: float = 1) -> None:
    """Add to a counter metric (flushed by the log_metrics middleware at the end of a handler)."""
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
