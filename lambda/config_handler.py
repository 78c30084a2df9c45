"""The nodes' documents custom resource (on the CDK Provider framework): writes each node's config
document to S3 and waits until the nodes in service applied it.  The logic is
haproxy_ha_runtime.config_lambda, which ships beside this file."""

from __future__ import annotations

from haproxy_ha_runtime.config_lambda import is_complete, on_event

__all__ = ["is_complete", "on_event"]
