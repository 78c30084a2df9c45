#!/usr/bin/env python3
"""HaproxyHa on a VPC found with `Vpc.from_lookup`, the usual way to use an existing VPC.

`cdk synth` here reads the lookup's answer from cdk.context.json (committed, made up: no AWS
account has this VPC).  Remove that file and the CDK CLI asks EC2 for the VPC, which needs
credentials for the account.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2

from haproxy_ha import HaproxyHa, Listener

app = cdk.App()
stack = cdk.Stack(app, "HaproxyHaLookup", env=cdk.Environment(account="123456789012", region="eu-west-1"))
vpc = ec2.Vpc.from_lookup(stack, "Vpc", vpc_id="vpc-0a1b2c3d4e5f60718")
lb = HaproxyHa(
    stack, "Lb",
    vip="172.16.254.10",
    vpc=vpc,
    listeners=[Listener(port=80, backends=("10.20.10.11:8080", "10.20.11.11:8080"), check_path="/healthz")],
    # Subnets that are not explicitly associated use the main route table.
    extra_route_table_ids=["rtb-0c00000000000000a"],
)
lb.connections.allow_from(ec2.Peer.ipv4("10.20.0.0/16"), ec2.Port.tcp(80))
lb.add_outputs()
app.synth()
