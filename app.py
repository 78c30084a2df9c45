#!/usr/bin/env python3
"""The haproxy-ha CDK app.

`cdk synth` works offline: with no credentials the stack uses a placeholder env (account
123456789012, eu-west-1) whose AZs and AMI are pinned in cdk.context.json.  With credentials,
the CLI's account and region are used.  Override the VIP with `-c vip=ADDRESS`.
"""

import aws_cdk as cdk

from haproxy_ha.stack import DEFAULT_VIP, HaproxyHaStack, app_env

app = cdk.App()
HaproxyHaStack(app, "HaproxyHa", vip=app.node.try_get_context("vip") or DEFAULT_VIP, env=app_env())
app.synth()
