"""Tag names that the construct, the agents, the Lambda and the operator CLI write and read."""

# On each node's ENI and instance: the node's name ("a" or "b").
NODE_TAG = "haproxy-ha:node"

# On both node ENIs: the ENI ID an operator chose with `haproxy-ha failover --to`.  The CLI
# writes it before it moves the routes.  While the chosen node is healthy, a MASTER that finds
# the routes there steps down instead of taking them back.
OPERATOR_CHOICE_TAG = "haproxy-ha:operator-choice"

# On a route table: the VIP whose route the stack's custom resource deleted (stack delete or
# rollback).  The reconciler never recreates that VIP's route in a table that carries it.
ROUTES_DELETED_TAG = "haproxy-ha:vip-route-deleted"
