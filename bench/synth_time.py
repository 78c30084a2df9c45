#!/usr/bin/env python3
"""Times `cdk synth` of the haproxy-ha app next to a bare two-AZ VPC app (median of N warm runs each).

Run from the repository root: `.venv/bin/python bench/synth_time.py [--runs 5]`.  Both apps are
synthesized by the pinned CDK CLI with the repo's cdk.json context, offline, in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BARE_APP = '''
import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2

app = cdk.App()
stack = cdk.Stack(app, "BareVpc", env=cdk.Environment(account="123456789012", region="eu-west-1"))
ec2.Vpc(stack, "Vpc", max_azs=2)
app.synth()
'''


def synth_once(app_command: str, out: Path, env: dict[str, str]) -> float:
    cli = REPO / "node_modules" / ".bin" / "cdk"
    start = time.perf_counter()
    subprocess.run([str(cli), "synth", "--quiet", "--app", app_command, "--output", str(out)],
                   cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per app after one warm-up (default 5)")
    args = parser.parse_args()

    python = sys.executable
    env = {**os.environ, "PATH": f"{Path(python).parent}:{os.environ.get('PATH', '')}",
           "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    for var in ("CDK_DEFAULT_ACCOUNT", "CDK_DEFAULT_REGION"):
        env.pop(var, None)
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        bare = Path(tmp) / "bare_app.py"
        bare.write_text(BARE_APP)
        apps = {"haproxy-ha app (app.py)": f"{python} app.py", "bare two-AZ VPC app": f"{python} {bare}"}
        times: dict[str, list[float]] = {name: [] for name in apps}
        for command in apps.values():  # warm-up: page cache, node and Python bytecode
            synth_once(command, Path(tmp) / "warm", env)
        for i in range(args.runs):  # interleaved, so drift on the machine hits both alike
            for name, command in apps.items():
                times[name].append(synth_once(command, Path(tmp) / f"out-{i}", env))

    print(f"cdk synth wall time, {args.runs} warm runs each ({os.cpu_count()} CPUs)")
    print(f"{'app':<28} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, values in times.items():
        print(f"{name:<28} {statistics.median(values):>9.2f} {min(values):>7.2f} {max(values):>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
