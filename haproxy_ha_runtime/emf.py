"""CloudWatch embedded metric format (EMF): one JSON object per line that CloudWatch Logs turns into
metrics when the line reaches a log group (the node's metrics file through the CloudWatch agent,
the Lambda's stdout through Lambda's own log group).  Builds the records; files.LineFile appends
them to the node's metrics file.

A record carries its metrics and dimensions as top-level members, named in its `_aws` metadata:

    {"_aws": {"Timestamp": 1764748800000, "CloudWatchMetrics": [{"Namespace": "HaproxyHa",
      "Dimensions": [["Pair", "Node"]], "Metrics": [{"Name": "Failovers", "Unit": "Count"}]}]},
     "Pair": "prod", "Node": "b", "Failovers": 1, "record": "failover"}

Other members (here `record`) are not metrics: CloudWatch keeps them in the log event, where
Logs Insights finds them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import metrics

# The units this project uses (CloudWatch knows more).
COUNT = "Count"
MILLISECONDS = "Milliseconds"
NONE = "None"
# The specification's limits: metrics per directive, dimensions per set.
MAX_METRICS = 100
MAX_DIMENSIONS = 30


@dataclass(frozen=True)
class Metric:
    """One metric value of a record."""

    name: str
    value: float
    unit: str = NONE


def record(dimensions: Mapping[str, str], values: Sequence[Metric], properties: Mapping[str, Any] | None = None,
           timestamp_ms: int | None = None, namespace: str = metrics.NAMESPACE) -> dict[str, Any]:
    """One EMF record: `values` under one set of `dimensions`, with `properties` beside them (they
    may not reuse a metric's or a dimension's name).  Raises ValueError on what CloudWatch would
    refuse: no metrics, too many, a name used twice, a value that is not a finite number, an
    empty dimension value."""
    names = [m.name for m in values]
    clash = sorted(set(names) & set(dimensions) | set(properties or {}) & (set(names) | set(dimensions) | {"_aws"}))
    problems = []
    if not values or len(values) > MAX_METRICS:
        problems.append(f"{len(values)} metrics (1 to {MAX_METRICS} allowed)")
    if len(dimensions) > MAX_DIMENSIONS:
        problems.append(f"{len(dimensions)} dimensions (at most {MAX_DIMENSIONS})")
    if len(set(names)) != len(names) or clash:
        problems.append(f"names used twice: {sorted({n for n in names if names.count(n) > 1} | set(clash))}")
    bad = [m.name for m in values if isinstance(m.value, bool) or not isinstance(m.value, (int, float))
           or not math.isfinite(m.value)]
    if bad:
        problems.append(f"not a finite number: {bad}")
    empty = [k for k, v in dimensions.items() if not isinstance(v, str) or not v.strip()]
    if empty:
        problems.append(f"dimension without a value: {empty}")
    if problems:
        raise ValueError("not a valid EMF record: " + "; ".join(problems))
    out: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [list(dimensions)],
                "Metrics": [{"Name": m.name, "Unit": m.unit} for m in values],
            }],
        },
    }
    out.update(dimensions)
    out.update({m.name: m.value for m in values})
    out.update(properties or {})
    return out


def line(rec: Mapping[str, Any]) -> str:
    """The record as one line of compact JSON (no newline)."""
    return json.dumps(rec, separators=(",", ":"), default=str)

