"""Who owns the VIP: the rules of DESIGN.md's "Who owns the VIP", as one pure decision that a
MASTER agent takes for each route table it checks.

The routes say who is active.  A MASTER that finds a table's route elsewhere decides, from what
it can see (the route, the peer's instance state from EC2, the peer's own report over the stats
port, and the operator's choice on the ENI tags), whether to take the route, to leave it, or to
step down so that VRRP follows the routes.
"""

from __future__ import annotations

from . import routes
from .peer import PeerView

OK = "ok"  # the route points here
TAKE = "take"  # point it here
LEAVE = "leave"  # leave it where it is (a healthy peer holds it, or we cannot tell)
STEP_DOWN = "step-down"  # the operator chose the healthy peer: let VRRP follow the routes
MISSING = "missing"  # no route: only the reconciler may create it


def decide(view: routes.VipRoute, me: str, peer_eni: str | None, peer: PeerView,
           peer_running: bool | None, operator_choice: str | None) -> str:
    """What a MASTER (whose own HAProxy is healthy) does about one table's VIP route.

    - A fault always wins: a route that is blackholed, targets something that is not a node,
      or targets a peer that is not running or whose HAProxy does not serve, is taken.
    - A peer that is MASTER and healthy keeps what it holds: two masters never take turns.
    - An operator move holds: a healthy peer that the operator chose keeps the routes, and this
      node steps down.
    - A healthy peer that is not MASTER and was not chosen is not where the routes belong: take.
    - When the peer cannot be reached (a partition, or our own link), leave the route: the
      take-over on a MASTER transition is the fast path, and a partition allows one move only.
    """
    if view.state == routes.ROUTE_MISSING:
        return MISSING
    if view.state == routes.ROUTE_ACTIVE and view.eni_id == me:
        return OK
    if view.state != routes.ROUTE_ACTIVE or view.eni_id is None or view.eni_id != peer_eni:
        return TAKE
    if peer_running is False:
        return TAKE
    if peer.unhealthy_haproxy:
        return TAKE
    if not peer.healthy_haproxy:
        return LEAVE
    if peer.vrrp == "MASTER":
        return LEAVE
    if operator_choice == peer_eni:
        return STEP_DOWN
    return TAKE


def unhealthy_gives_to_peer(peer: PeerView, peer_running: bool | None) -> bool:
    """Does a node whose own HAProxy does not serve hand the routes that point at it to the peer?
    A node that knows it cannot serve never keeps them:

    - a peer whose HAProxy serves takes them;
    - a peer whose HAProxy is known not to serve does not: neither node serves, and a move would
      only drop connections;
    - a peer it cannot hear (a partition, or the peer's agent is down) takes them when EC2 says its
      instance is running: a target known to be dead is the worst choice of all, and the peer may
      well serve.  Not when its instance is not running, or EC2 cannot say.
    """
    if peer.healthy_haproxy:
        return True
    if peer.unhealthy_haproxy:
        return False
    return peer_running is True
