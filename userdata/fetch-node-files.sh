#!/bin/bash
# Fetches what a node boots from, on every boot: the node files (boot.sh, the units, the node
# runtime: one zip in S3), unpacked to /opt/haproxy-ha, and this node's config document (its fixed
# key in the stack's document bucket), saved as /etc/haproxy-ha/node.json.  User data writes this
# script to /usr/local/libexec/haproxy-ha/, because the node files are what it fetches;
# haproxy-ha-boot.service runs it before boot.sh, which checks the document.
# The document in S3 is the newest version of it (the agent applies each new one while the node
# runs, and keeps it as node.json too), so a reboot or a new instance boots with that version.
# Right after launch, the NAT route, the S3 endpoint or the instance's credentials may not work
# yet: each try is the AWS CLI's own retries, and the waits between tries double from 5 s.
# HAPROXY_HA_ROOT relocates every path (the tests run it in a scratch folder).
set -euo pipefail

readonly ROOT=${HAPROXY_HA_ROOT:-}
readonly DEST=$ROOT/opt/haproxy-ha
readonly ZIP=$ROOT/var/lib/haproxy-ha/node-files.zip
readonly CONFIG=$ROOT/etc/haproxy-ha/node.json
readonly TRIES=${HAPROXY_HA_FETCH_TRIES:-5}
readonly FIRST_DELAY_S=${HAPROXY_HA_FETCH_DELAY_S:-5}
: "${NODE_FILES_URL:?NODE_FILES_URL (the node files object, s3://...) is not set}"
: "${NODE_CONFIG_URL:?NODE_CONFIG_URL (the config document of this node, s3://...) is not set}"
: "${AWS_REGION:?AWS_REGION is not set}"
export AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=10

log() { echo "haproxy-ha fetch: $*" >&2; }

# fetch URL FILE: FILE is replaced only by a complete copy.
fetch() {
  local url=$1 file=$2 attempt delay=$FIRST_DELAY_S
  install -d -m 0755 "$(dirname "$file")"
  for ((attempt = 1; attempt <= TRIES; attempt++)); do
    if aws s3 cp --only-show-errors --region "$AWS_REGION" "$url" "$file.part"; then
      mv -f "$file.part" "$file"
      return 0
    fi
    if ((attempt < TRIES)); then
      log "could not fetch $url (try $attempt of $TRIES); next try in ${delay}s"
      sleep "$delay"
      delay=$((delay * 2))
    fi
  done
  log "could not fetch $url after $TRIES tries"
  return 1
}

unpack() {
  # Unpack beside the live folder, then swap: a failed unpack leaves the last good files in place.
  rm -rf "$DEST.new"
  python3 -m zipfile -e "$ZIP" "$DEST.new"
  rm -rf "$DEST"
  mv "$DEST.new" "$DEST"
}

fetch "$NODE_FILES_URL" "$ZIP"
unpack
log "node files from $NODE_FILES_URL are in $DEST"
fetch "$NODE_CONFIG_URL" "$CONFIG"
log "the config document from $NODE_CONFIG_URL is $CONFIG"
