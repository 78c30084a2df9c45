"""The failover lab: network namespaces that stand in for the VPC, running real HAProxy,
keepalived and the node agent on configs rendered from node config documents."""
