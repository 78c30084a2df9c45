"""Tag names that the construct writes and the operator CLI reads."""

# On each node's ENI and instance: the node's name ("a" or "b").
NODE_TAG = "haproxy-ha:node"
