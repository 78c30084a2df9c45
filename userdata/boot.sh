#!/bin/bash
# Boots a haproxy-ha node on Amazon Linux 2023: installs haproxy and keepalived, renders their
# configuration from the node config document, and starts them with the haproxy-ha agent.
# User data runs it on every boot (after unpacking the node files), so it must stay idempotent.
set -euo pipefail

readonly FILES_DIR=/opt/haproxy-ha
readonly CONFIG=${HAPROXY_HA_CONFIG:-/etc/haproxy-ha/node.json}
readonly PACKAGES=(haproxy keepalived python3-boto3)
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

install_units() {
  install -m 0644 "$FILES_DIR/haproxy-ha-agent.service" /etc/systemd/system/haproxy-ha-agent.service
  install -d -m 0755 /etc/systemd/system/keepalived.service.d /etc/systemd/system/haproxy.service.d
  install -m 0644 "$FILES_DIR/keepalived-haproxy-ha.conf" /etc/systemd/system/keepalived.service.d/haproxy-ha.conf
  install -m 0644 "$FILES_DIR/haproxy-haproxy-ha.conf" /etc/systemd/system/haproxy.service.d/haproxy-ha.conf
  install -m 0644 "$FILES_DIR/haproxy-ha-tmpfiles.conf" /etc/tmpfiles.d/haproxy-ha.conf
  systemd-tmpfiles --create /etc/tmpfiles.d/haproxy-ha.conf
  systemctl daemon-reload
}

main() {
  install_packages
  log "checking $CONFIG"
  # Exits 2 with a message naming each bad field: stop before touching any service.
  python3 -m haproxy_ha_runtime check --config "$CONFIG"
  install_units
  log "rendering keepalived and haproxy configuration; haproxy -c and keepalived -t must accept it"
  python3 -m haproxy_ha_runtime render --config "$CONFIG"
  systemctl enable haproxy.service haproxy-ha-agent.service keepalived.service
  # Order matters: HAProxy serves, the agent reports its health and listens on the notify FIFO,
  # and only then may keepalived take part in elections.
  systemctl restart haproxy.service
  systemctl restart haproxy-ha-agent.service
  systemctl restart keepalived.service
  log "node is up"
}

main "$@"
