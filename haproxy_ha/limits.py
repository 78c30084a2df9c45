"""Limits of AWS that a deploy would meet only halfway through, checked at synth instead.

- Lambda caps a function's environment at 4 KB (its keys and values).  The reconciler's holds the
  route table IDs, so enough tables would fail the function's creation.
- Step Functions caps a state's input at 256 KB.  The documents' resource runs on the Provider
  framework, whose waiter state machine carries the event, and an Update's event holds both
  nodes' documents twice (old and new).

A value known only at deploy time is counted at its longest: `ref_bound` characters for what a
`Ref` or `Fn::GetAtt` resolves to (ID_BOUND for an EC2 ID, TOKEN_BOUND for an ARN, a bucket name
or an address), and as JSON escapes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aws_cdk import Stack

LAMBDA_ENVIRONMENT_LIMIT = 4096
STEP_FUNCTIONS_INPUT_LIMIT = 262144
# An EC2 ID at its longest: rtb- or eni- and 17 hex digits.
ID_BOUND = 21
# Anything else an intrinsic resolves to in a document: an ARN, a bucket or group name, an address.
TOKEN_BOUND = 128
# The framework's own fields around the properties (request IDs, URLs, the handler's answer).
EVENT_OVERHEAD = 8192


def resolved_length(stack: Stack, value: Any, ref_bound: int = TOKEN_BOUND) -> int:
    """An upper bound of the length of `value` (a string, or properties) as JSON text once
    CloudFormation has resolved it."""
    return _length(stack.resolve(value), ref_bound)


def _length(value: Any, ref_bound: int) -> int:
    if isinstance(value, str):
        return len(json.dumps(value)) - 2
    if isinstance(value, dict) and len(value) == 1:
        ((key, args),) = value.items()
        if key == "Fn::Join":
            separator, parts = args
            return sum(_length(p, ref_bound) for p in parts) + len(separator) * max(0, len(parts) - 1)
        if key in ("Ref", "Fn::GetAtt"):
            return ref_bound
    if isinstance(value, dict):
        return 2 + sum(len(json.dumps(k)) + 1 + _length(v, ref_bound) + 2 for k, v in value.items())
    if isinstance(value, list):
        return 2 + sum(_length(v, ref_bound) + 1 for v in value)
    return len(json.dumps(value))


def environment_size(stack: Stack, variables: Mapping[str, Any]) -> int:
    """The size of an environment as a JSON object (IDs at ID_BOUND): at least what Lambda counts,
    its keys and values, so a refusal here comes no later than Lambda's."""
    return 2 + sum(len(json.dumps(key)) + 1 + resolved_length(stack, value, ID_BOUND) + 2 + 1
                   for key, value in variables.items()) - (1 if variables else 0)


def waiter_input_size(stack: Stack, properties: Mapping[str, Any]) -> int:
    """The documents' resource's waiter input on an Update: the properties twice, and the rest."""
    return 2 * resolved_length(stack, dict(properties)) + EVENT_OVERHEAD
