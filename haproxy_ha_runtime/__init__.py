"""Code that runs on the HAProxy nodes and in the route Lambda: stdlib and boto3 only, Python 3.9+.

Nothing here imports the AWS CDK; the construct ships this package as an asset.
"""
