"""The route Lambda's entry points, as the construct names them (`handler.on_event`,
`handler.reconcile`).  The logic lives in haproxy_ha_runtime/route_lambda.py, which ships next to
this file in the Lambda's asset.
"""

from haproxy_ha_runtime.route_lambda import on_event, reconcile

__all__ = ["on_event", "reconcile"]
