"""Stand-in for the AWS CLI's `aws s3 cp s3://BUCKET/KEY FILE`, which the node's fetch script runs
(the CLI is not installed here): the same download with boto3, from the S3 endpoint that
AWS_ENDPOINT_URL names (a moto server).  Each call is appended to $AWS_CLI_LOG when it is set.

    python -m tests.support.aws_cli_stand_in s3 cp --only-show-errors --region eu-west-1 s3://b/k FILE

Only that command is served; anything else exits 2, as the CLI does for a usage error.
"""

from __future__ import annotations

import os
import sys

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def main(argv: list[str]) -> int:
    log = os.environ.get("AWS_CLI_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write("aws " + " ".join(argv) + "\n")
    args = [a for a in argv if a != "--only-show-errors"]
    region = None
    if "--region" in args:
        i = args.index("--region")
        region = args[i + 1]
        del args[i:i + 2]
    if len(args) != 4 or args[:2] != ["s3", "cp"] or not args[2].startswith("s3://"):
        print(f"aws stand-in: only `s3 cp s3://BUCKET/KEY FILE` is served; got {argv}", file=sys.stderr)
        return 2
    bucket, _, key = args[2].removeprefix("s3://").partition("/")
    try:
        boto3.session.Session().client("s3", region_name=region).download_file(bucket, key, args[3])
    except (BotoCoreError, ClientError) as e:
        print(f"fatal error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
