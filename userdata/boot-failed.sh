#!/bin/bash
# Runs when haproxy-ha-boot.service has failed for good (its OnFailure=): systemd stopped retrying
# it, or it ended with a status it does not retry.  A node whose boot gave up serves nothing, yet
# passes the group's EC2 health check: ask the group for a new instance, unless the document was
# refused (status 2), which a new instance would refuse too.  User data writes this file to
# /usr/local/libexec/haproxy-ha/ (the runtime may never have been fetched).  During a deploy, the
# group's health replacements are suspended, and CloudFormation rolls the deploy back instead.
# HAPROXY_HA_IMDS points it at a stand-in in the tests.
set -euo pipefail

readonly IMDS=${HAPROXY_HA_IMDS:-http://169.254.169.254}
: "${AWS_REGION:?AWS_REGION is not set}"
# Set by systemd (251 and later) for an OnFailure= unit: the failed unit's exit status.
readonly STATUS=${MONITOR_EXIT_STATUS:-unknown}

log() { echo "haproxy-ha boot-failed: $*" >&2; }

if [[ $STATUS == 2 ]]; then
  log "the boot refused the node's document (exit 2): a new instance would too, so none is asked for"
  exit 0
fi
token=$(curl -sSf --retry 3 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" "$IMDS/latest/api/token")
instance=$(curl -sSf --retry 3 -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/meta-data/instance-id")
AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=10 aws autoscaling set-instance-health --region "$AWS_REGION" \
  --instance-id "$instance" --health-status Unhealthy --no-should-respect-grace-period
log "the boot gave up (status $STATUS): asked the group to replace $instance"
