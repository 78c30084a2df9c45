#!/bin/bash
# Boots a haproxy-ha node on Amazon Linux 2023: installs haproxy and keepalived, renders their
# configuration from the node config document (checked by haproxy -c and keepalived -t before
# it is swapped in), starts HAProxy, the agent and keepalived, and waits until the node is ready
# (which signals CloudFormation when the document names a stack).  When the document names log
# groups, rsyslog writes HAProxy's and keepalived's logs to files and the CloudWatch agent ships
# them with the agent's events and metric records.
# User data runs it on every boot (after unpacking the node files), so it must stay idempotent:
# a second run reloads what changed and never restarts keepalived.
# HAPROXY_HA_ROOT relocates every system path (the tests run it in a scratch folder).
set -euo pipefail

readonly ROOT=${HAPROXY_HA_ROOT:-}
readonly FILES_DIR=${HAPROXY_HA_FILES_DIR:-$ROOT/opt/haproxy-ha}
readonly CONFIG=${HAPROXY_HA_CONFIG:-$ROOT/etc/haproxy-ha/node.json}
readonly UNITS=$ROOT/etc/systemd/system
readonly READY_TIMEOUT_S=${HAPROXY_HA_READY_TIMEOUT_S:-900}
readonly PACKAGES=(haproxy keepalived python3-boto3 amazon-cloudwatch-agent rsyslog logrotate)
readonly CWAGENT_CTL=$ROOT/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl
# The CloudWatch agent's config, when the document names log groups (set by render_log_files).
SHIP_CONFIG=""
export PYTHONPATH=$FILES_DIR

log() { echo "haproxy-ha boot: $*" >&2; }

install_packages() {
  if rpm -q "${PACKAGES[@]}" >/dev/null 2>&1; then
    return 0
  fi
  local attempt
  # The repositories can be unreachable for a few seconds right after first boot.
  for attempt in 1 2 3 4 5 6; do
    if dnf install -y -q "${PACKAGES[@]}"; then
      return 0
    fi
    log "dnf install failed (attempt $attempt); retrying"
    sleep $((attempt * 5))
  done
  log "could not install ${PACKAGES[*]}"
  return 1
}

log_versions() {
  # What this node runs, for whoever reads the journal (AL2023 has shipped HAProxy 2.8 and 3.0).
  log "versions: $(haproxy -v 2>&1 | head -n 1); $(keepalived --version 2>&1 | head -n 1);" \
    "$(python3 --version 2>&1); boto3 $(python3 -c 'import boto3; print(boto3.__version__)' 2>&1)"
}

install_units() {
  install -d -m 0755 "$UNITS/keepalived.service.d" "$UNITS/haproxy.service.d" "$ROOT/etc/tmpfiles.d"
  install -m 0644 "$FILES_DIR/haproxy-ha-agent.service" "$UNITS/haproxy-ha-agent.service"
  install -m 0644 "$FILES_DIR/keepalived-haproxy-ha.conf" "$UNITS/keepalived.service.d/haproxy-ha.conf"
  install -m 0644 "$FILES_DIR/haproxy-haproxy-ha.conf" "$UNITS/haproxy.service.d/haproxy-ha.conf"
  install -m 0644 "$FILES_DIR/haproxy-ha-tmpfiles.conf" "$ROOT/etc/tmpfiles.d/haproxy-ha.conf"
  # The run directory (notify FIFO, track files, HAProxy's socket) exists before keepalived starts.
  systemd-tmpfiles --create "$ROOT/etc/tmpfiles.d/haproxy-ha.conf"
  systemctl daemon-reload
}

render_log_files() {
  # Renders the CloudWatch agent's, rsyslog's and logrotate's files, and prints the first one's
  # path, when the document names log groups; else removes them and prints nothing.
  SHIP_CONFIG=$(python3 -m haproxy_ha_runtime ship --config "$CONFIG")
  if [[ -z $SHIP_CONFIG ]]; then
    log "the document names no log groups: logs and metric records stay on the node"
    return 0
  fi
  systemctl enable rsyslog.service
  # rsyslog reads its drop-in only when it starts; its socket for HAProxy's access log must be
  # there before HAProxy logs.
  systemctl restart rsyslog.service
}

start_cloudwatch_agent() {
  if [[ -z $SHIP_CONFIG ]]; then
    # Shipping turned off: stop an agent that an earlier boot started.
    if [[ -x $CWAGENT_CTL ]]; then "$CWAGENT_CTL" -a stop >/dev/null 2>&1 || true; fi
    return 0
  fi
  # Translates the JSON into the agent's own config and (re)starts it.  A failure here costs the
  # node its shipping, not its place in the pair: say so, and go on.
  if ! "$CWAGENT_CTL" -a fetch-config -m ec2 -s -c "file:$SHIP_CONFIG"; then
    log "WARNING: the CloudWatch agent refused $SHIP_CONFIG; logs and metric records stay on the node"
  fi
}

start_services() {
  systemctl enable haproxy.service haproxy-ha-agent.service keepalived.service
  # HAProxy runs in master-worker mode: a reload hands the listening sockets over, refusing nothing.
  systemctl reload-or-restart haproxy.service
  # The agent says READY once it holds keepalived's notify FIFO; a restart resumes its state.
  systemctl restart haproxy-ha-agent.service
  # keepalived starts once, with the final configuration.  On a later run it re-reads its file
  # (SIGHUP), which keeps its VRRP state: a restart would move the routes.
  if systemctl is-active --quiet keepalived.service; then
    systemctl reload keepalived.service
  else
    systemctl start keepalived.service
  fi
}

main() {
  install_packages
  log_versions
  log "checking $CONFIG"
  # Exits 2 with a message naming each bad field: stop before touching any service.
  python3 -m haproxy_ha_runtime check --config "$CONFIG"
  install_units
  log "rendering keepalived and haproxy configuration; haproxy -c and keepalived -t must accept it"
  python3 -m haproxy_ha_runtime render --config "$CONFIG"
  render_log_files
  start_services
  start_cloudwatch_agent
  log "services started; waiting until the node is ready"
  python3 -m haproxy_ha_runtime ready --config "$CONFIG" --timeout "$READY_TIMEOUT_S"
  log "node is up"
}

main "$@"
