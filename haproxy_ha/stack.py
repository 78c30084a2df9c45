"""The deployable haproxy-ha stack: a new VPC, the HAProxy pair, and outputs that say how to reach it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from aws_cdk import CfnOutput, Environment, Stack
from constructs import Construct

from haproxy_ha.construct import HaproxyHa
from haproxy_ha.listener import Listener

# Outside the new VPC's 10.0.0.0/16, and outside the 172.31.0.0/16 of default VPCs it may be peered with.
DEFAULT_VIP = "192.168.254.10"
# Offline synth (no credentials) uses this env; cdk.context.json pins its AZs and AMI so no lookup is needed.
PLACEHOLDER_ENV = Environment(account="123456789012", region="eu-west-1")


def app_env(environ: Mapping[str, str] | None = None) -> Environment:
    """The account and region the CDK CLI found (CDK_DEFAULT_*), or the placeholder env when it found none."""
    environ = os.environ if environ is None else environ
    account = environ.get("CDK_DEFAULT_ACCOUNT")
    region = environ.get("CDK_DEFAULT_REGION")
    if account and region:
        return Environment(account=account, region=region)
    return PLACEHOLDER_ENV


class HaproxyHaStack(Stack):
    """The haproxy-ha app: a new two-AZ VPC and a pair that answers `curl http://VIP/` from inside it."""

    def __init__(self, scope: Construct, id: str, *, vip: str = DEFAULT_VIP, **kwargs: Any) -> None:
        super().__init__(scope, id, description="haproxy-ha: HA HAProxy pair on an overlay VIP", **kwargs)
        self.haproxy = HaproxyHa(
            self,
            "HaproxyHa",
            vip=vip,
            listeners=[Listener(port=80, name="hello", static_reply="haproxy-ha: served by node {node}")],
        )
        lb = self.haproxy
        # Vip, VpcId, RouteTableIds, the node ENIs, the pair's name and the documents bucket: what
        # `haproxy-ha status --stack NAME` reads.
        lb.add_outputs()
        CfnOutput(self, "Dashboard", value=lb.dashboard.dashboard_name,
                  description="The pair's CloudWatch dashboard")
        for key, log_group, what in (("AgentLogGroup", lb.log_groups.agent, "the agents' JSON events"),
                                     ("MetricsLogGroup", lb.log_groups.metrics, "the agents' metric records (EMF)"),
                                     ("HaproxyLogGroup", lb.log_groups.haproxy, "HAProxy's access log"),
                                     ("KeepalivedLogGroup", lb.log_groups.keepalived, "keepalived's log")):
            CfnOutput(self, key, value=log_group.log_group_name, description=f"Log group: {what}, both nodes")
        for n in lb.nodes:
            label = n.name.upper()
            group = n.auto_scaling_group_name
            CfnOutput(self, f"Node{label}AutoScalingGroup", value=group,
                      description=f"Node {n.name}: its Auto Scaling group of one instance")
            # The group replaces the instance, so the command looks up the one in service now.
            lookup = (f"$(aws autoscaling describe-auto-scaling-groups --region {self.region} "
                      f"--auto-scaling-group-names {group} --output text --query "
                      "\"AutoScalingGroups[0].Instances[?LifecycleState=='InService'].InstanceId | [0]\")")
            CfnOutput(
                self,
                f"Node{label}SsmSession",
                value=f"aws ssm start-session --region {self.region} --target {lookup}",
                description=f"Shell on node {n.name}'s instance over SSM Session Manager (no SSH)",
            )
