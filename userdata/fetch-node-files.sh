#!/bin/bash
# Fetches the node files (boot.sh, the units, the node runtime: one zip in S3) and unpacks them
# to /opt/haproxy-ha.  User data writes it to /usr/local/libexec/haproxy-ha/, because the node
# files are what it fetches; haproxy-ha-boot.service runs it before boot.sh, on every boot.
# Right after launch, the NAT route, the S3 endpoint or the instance's credentials may not work
# yet: each try is the AWS CLI's own retries, and the waits between tries double from 5 s.
# HAPROXY_HA_ROOT relocates every path (the tests run it in a scratch folder).
set -euo pipefail

readonly ROOT=${HAPROXY_HA_ROOT:-}
readonly DEST=$ROOT/opt/haproxy-ha
readonly ZIP=$ROOT/var/lib/haproxy-ha/node-files.zip
readonly TRIES=${HAPROXY_HA_FETCH_TRIES:-5}
readonly FIRST_DELAY_S=${HAPROXY_HA_FETCH_DELAY_S:-5}
: "${NODE_FILES_URL:?NODE_FILES_URL (the node files object, s3://...) is not set}"
: "${AWS_REGION:?AWS_REGION is not set}"
export AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=10

log() { echo "haproxy-ha fetch: $*" >&2; }

fetch() {
  local attempt delay=$FIRST_DELAY_S
  install -d -m 0755 "$(dirname "$ZIP")"
  for ((attempt = 1; attempt <= TRIES; attempt++)); do
    if aws s3 cp --only-show-errors --region "$AWS_REGION" "$NODE_FILES_URL" "$ZIP.part"; then
      mv -f "$ZIP.part" "$ZIP"
      return 0
    fi
    if ((attempt < TRIES)); then
      log "could not fetch $NODE_FILES_URL (try $attempt of $TRIES); next try in ${delay}s"
      sleep "$delay"
      delay=$((delay * 2))
    fi
  done
  log "could not fetch $NODE_FILES_URL after $TRIES tries"
  return 1
}

unpack() {
  # Unpack beside the live folder, then swap: a failed unpack leaves the last good files in place.
  rm -rf "$DEST.new"
  python3 -m zipfile -e "$ZIP" "$DEST.new"
  rm -rf "$DEST"
  mv "$DEST.new" "$DEST"
}

fetch
unpack
log "node files from $NODE_FILES_URL are in $DEST"
