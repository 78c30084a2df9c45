#!/usr/bin/env python3
"""A minimal second app that uses HaproxyHa in a VPC it already has (three AZs, imported by attributes)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from haproxy_ha import HaproxyHa, Listener

AZS = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]


class ConsumerStack(cdk.Stack):
    """An existing three-AZ VPC (public and private subnets, one route table each, plus its main table)."""

    def __init__(self, scope: Construct, id: str, **kwargs: object) -> None:
        super().__init__(scope, id, **kwargs)  # type: ignore[arg-type]
        vpc = ec2.Vpc.from_vpc_attributes(
            self, "Vpc",
            vpc_id="vpc-0a1b2c3d4e5f60718",
            vpc_cidr_block="10.20.0.0/16",
            availability_zones=AZS,
            public_subnet_ids=["subnet-0a00000000000000a", "subnet-0a00000000000000b", "subnet-0a00000000000000c"],
            public_subnet_route_table_ids=["rtb-0a00000000000000a", "rtb-0a00000000000000b",
                                           "rtb-0a00000000000000c"],
            private_subnet_ids=["subnet-0b00000000000000a", "subnet-0b00000000000000b",
                                "subnet-0b00000000000000c"],
            private_subnet_route_table_ids=["rtb-0b00000000000000a", "rtb-0b00000000000000b",
                                            "rtb-0b00000000000000c"],
        )
        self.lb = HaproxyHa(
            self, "Lb",
            vip="172.16.254.10",
            vpc=vpc,
            listeners=[
                Listener(port=80, name="web", backends=("10.20.10.11:8080", "10.20.11.11:8080"),
                         check_path="/healthz"),
                Listener(port=5432, name="db", mode="tcp", backends=("db.internal:5432",)),
            ],
            # Subnets that are not explicitly associated use the main route table.
            extra_route_table_ids=["rtb-0c00000000000000a"],
            # A node that is replaced lets requests in flight finish for up to 2 minutes.
            drain_timeout=cdk.Duration.minutes(2),
        )
        app_sg = ec2.SecurityGroup.from_security_group_id(self, "AppSg", "sg-0123456789abcdef0")
        self.lb.connections.allow_from(app_sg, ec2.Port.tcp(80), "app servers to the VIP")
        cdk.CfnOutput(self, "Vip", value=self.lb.vip)


if __name__ == "__main__":
    app = cdk.App()
    ConsumerStack(app, "HaproxyHaConsumer", env=cdk.Environment(account="123456789012", region="eu-west-1"))
    app.synth()
