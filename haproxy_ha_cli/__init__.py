"""The operator CLI, `haproxy-ha`: boto3 and the node runtime's route module, no CDK, Python 3.9+."""
