"""The pair's metrics: one CloudWatch namespace, and the names and dimensions that the nodes, the
reconciler, the construct's alarms and dashboard, and the CLI share.  Nothing here publishes;
it only names.

Dimensions:
- every metric has PAIR (the construct's pair name, unique in its account and region);
- node metrics add NODE (a or b);
- listener metrics add LISTENER, backend metrics add BACKEND (HAProxy's proxy names: a
  listener's frontend and backend share its name).
"""

from __future__ import annotations

NAMESPACE = "HaproxyHa"

# Dimension names.
PAIR = "Pair"
NODE = "Node"
LISTENER = "Listener"
BACKEND = "Backend"

# -- from the agent, per node (dimensions PAIR, NODE) ------------------------------------------
# 1 while keepalived says MASTER, else 0; with VRRP_BACKUP and VRRP_FAULT, the state over time.
VRRP_MASTER = "VrrpMaster"
VRRP_BACKUP = "VrrpBackup"
VRRP_FAULT = "VrrpFault"
# 1 while the node's own HAProxy answers its health check, else 0.
HAPROXY_HEALTHY = "HaproxyHealthy"
# 1 while this node is MASTER, its HAProxy healthy, and every route it last read points at it.
ACTIVE = "Active"
# 1 when a read-only EC2 call with the node's own credentials worked (MASTER and BACKUP alike,
# checked periodically), else 0.
EC2_API_REACHABLE = "Ec2ApiReachable"
# A fault moved the VIP here (count), and how long the move took (milliseconds).
FAILOVERS = "Failovers"
FAILOVER_TIME = "FailoverTakeOverTime"
# Planned moves: a step-down, a node leaving through its termination hook, an operator's move.
# They never count as failovers, so that a rolling replacement pages nobody.
PLANNED_MOVES = "PlannedMoves"
PLANNED_MOVE_TIME = "PlannedMoveTime"
# Routes the MASTER found wrong and rewrote (count), and how long that took (milliseconds).
ROUTE_REPAIRS = "RouteRepairs"
ROUTE_REPAIR_TIME = "RouteRepairTime"
# Route tables the MASTER cannot write (gone, malformed, or not its role's to write), which it has
# set aside so that the others converge; it tries them again at each repair tick.  In the state
# record only while there are some, so that a pair whose tables are all fine pays for no metric.
ROUTE_TABLES_SET_ASIDE = "RouteTablesSetAside"
# A leaving node kept the VIP, its peer not fit to take it (one record per reason).
HAND_OVERS_HELD = "HandOversHeld"

# -- from HAProxy (the stats socket), per listener or backend ----------------------------------
# Per listener (PAIR, NODE, LISTENER): requests and 5xx answers since the last sample, sessions open.
REQUESTS = "Requests"
HTTP_5XX = "Http5xx"
CURRENT_SESSIONS = "CurrentSessions"
# Per backend (PAIR, NODE, BACKEND): average response time (ms) and servers up, of all servers.
RESPONSE_TIME = "ResponseTime"
SERVERS_UP = "ServersUp"
SERVERS = "Servers"

# -- from the reconciler (PAIR) ----------------------------------------------------------------
ROUTES_NOT_AT_HEALTHY_NODE = "RoutesNotAtHealthyNode"
ROUTES_MOVED = "RoutesMoved"
