"""haproxy-ha: an AWS CDK construct for a highly available HAProxy pair on an overlay VIP."""

from haproxy_ha.construct import HaproxyHa, HaproxyHaNode
from haproxy_ha.listener import HealthCheck, Listener
from haproxy_ha.stack import HaproxyHaStack
from haproxy_ha.validation import HaproxyHaPropsError

__all__ = ["HaproxyHa", "HaproxyHaNode", "HaproxyHaPropsError", "HaproxyHaStack", "HealthCheck", "Listener"]
