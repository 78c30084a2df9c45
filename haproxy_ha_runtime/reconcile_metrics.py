"""The reconciler's metrics: one EMF record per run, printed as a line of the Lambda's output, from
which the function's log group makes the metrics by itself (no PutMetricData, no grant).

    RoutesNotAtHealthyNode  VIP routes it found missing, blackholed or at a node not running
    RoutesMoved             VIP routes it moved to a running node

Both under the dimension Pair, whose value the function's environment gives as PAIR_NAME.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from . import emf, metrics

# The function's environment variable that names the pair (the Pair dimension's value).
PAIR_NAME_ENV = "PAIR_NAME"


def record(pair: str, report: Mapping[str, Any], trigger: str | None = None) -> dict[str, Any]:
    """The EMF record of one reconcile run, from its report (lambda/handler.reconcile_routes)."""
    return emf.record(
        {metrics.PAIR: pair},
        [emf.Metric(metrics.ROUTES_NOT_AT_HEALTHY_NODE, len(report.get("broken") or []), emf.COUNT),
         emf.Metric(metrics.ROUTES_MOVED, len(report.get("moved") or []), emf.COUNT)],
        {"record": "reconcile", "trigger": trigger, "target": report.get("target"),
         "failed": len(report.get("failed") or {}), "tables_not_found": len(report.get("tables_not_found") or [])})


def emit(report: Mapping[str, Any], trigger: str | None = None, environ: Mapping[str, str] = os.environ,
         out: IO[str] | None = None) -> bool:
    """Print the run's record (one line).  Nothing without PAIR_NAME in the environment: the
    metrics would have no pair.  Returns whether it printed."""
    pair = environ.get(PAIR_NAME_ENV)
    if not pair:
        return False
    stream = out if out is not None else sys.stdout
    stream.write(emf.line(record(pair, report, trigger)) + "\n")
    stream.flush()
    return True
