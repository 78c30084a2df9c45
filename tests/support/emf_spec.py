"""The CloudWatch embedded metric format specification's structure, as a checker: what CloudWatch
Logs needs of a log event before it extracts metrics from it.  moto extracts nothing from EMF, so
the tests hold every record the nodes and the reconciler write to this instead.

From the specification (Amazon CloudWatch User Guide, "Specification: Embedded metric format"):
- the log event is one JSON object;
- its root has `_aws`, an object with `Timestamp` (a number: milliseconds since the epoch) and
  `CloudWatchMetrics` (an array of MetricDirective objects);
- a MetricDirective has `Namespace` (a string), `Dimensions` (an array of DimensionSets: arrays of
  at most 30 strings, each naming a member of the root) and `Metrics` (an array of at most 100
  MetricDefinitions: `Name`, naming a member of the root, an optional `Unit` from CloudWatch's
  list, an optional `StorageResolution` of 1 or 60);
- every dimension named is a root member whose value is a string; every metric named is a root
  member whose value is a number, or an array of at most 100 numbers.
"""

from __future__ import annotations

import json
import math
from typing import Any

UNITS = {
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes", "Bits",
    "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second", "Kilobytes/Second",
    "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second",
    "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def problems(line: str) -> list[str]:
    """What keeps this log line from being an EMF document (empty: it is one)."""
    try:
        doc = json.loads(line)
    except ValueError as e:
        return [f"not JSON: {e}"]
    if not isinstance(doc, dict):
        return ["the root is not a JSON object"]
    meta = doc.get("_aws")
    if not isinstance(meta, dict):
        return ["no _aws object at the root"]
    out = []
    if not _number(meta.get("Timestamp")):
        out.append(f"_aws.Timestamp: {meta.get('Timestamp')!r} is not a number")
    directives = meta.get("CloudWatchMetrics")
    if not isinstance(directives, list) or not directives:
        return [*out, "_aws.CloudWatchMetrics is not a non-empty array"]
    for i, d in enumerate(directives):
        where = f"_aws.CloudWatchMetrics[{i}]"
        if not isinstance(d, dict):
            out.append(f"{where} is not an object")
            continue
        if not isinstance(d.get("Namespace"), str) or not 1 <= len(d["Namespace"]) <= 255:
            out.append(f"{where}.Namespace is not a string of 1-255 characters")
        dims = d.get("Dimensions")
        if not isinstance(dims, list):
            out.append(f"{where}.Dimensions is not an array")
            dims = []
        for j, dim_set in enumerate(dims):
            if not isinstance(dim_set, list) or len(dim_set) > 30:
                out.append(f"{where}.Dimensions[{j}] is not an array of at most 30 names")
                continue
            for name in dim_set:
                if not isinstance(name, str) or name not in doc:
                    out.append(f"dimension {name!r} is not a member of the root")
                elif not isinstance(doc[name], str) or not doc[name]:
                    out.append(f"dimension {name!r} has no string value")
        defs = d.get("Metrics")
        if not isinstance(defs, list) or not 1 <= len(defs) <= 100:
            out.append(f"{where}.Metrics is not an array of 1-100 metric definitions")
            defs = []
        for m in defs:
            if not isinstance(m, dict) or not isinstance(m.get("Name"), str):
                out.append(f"{where}.Metrics: {m!r} has no Name")
                continue
            name = m["Name"]
            value = doc.get(name)
            if name not in doc:
                out.append(f"metric {name!r} is not a member of the root")
            elif not (_number(value) or (isinstance(value, list) and 0 < len(value) <= 100
                                         and all(_number(v) for v in value))):
                out.append(f"metric {name!r} has no numeric value: {value!r}")
            if "Unit" in m and m["Unit"] not in UNITS:
                out.append(f"metric {name!r}: unit {m['Unit']!r} is not one of CloudWatch's")
            if "StorageResolution" in m and m["StorageResolution"] not in (1, 60):
                out.append(f"metric {name!r}: StorageResolution {m['StorageResolution']!r} is not 1 or 60")
            extra = set(m) - {"Name", "Unit", "StorageResolution"}
            if extra:
                out.append(f"metric {name!r}: members the specification does not define: {sorted(extra)}")
    return out


def metrics_of(doc: dict[str, Any]) -> dict[str, Any]:
    """Every metric a valid EMF document carries, by name, with its value."""
    return {m["Name"]: doc[m["Name"]] for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}


def dimensions_of(doc: dict[str, Any]) -> list[dict[str, str]]:
    """Each dimension set of a valid EMF document, with its values."""
    return [{name: doc[name] for name in dim_set}
            for d in doc["_aws"]["CloudWatchMetrics"] for dim_set in d["Dimensions"]]
