#!/usr/bin/env bash
# Add (or re-key) a store's login on the broker and print the [mqtt] section for its config.
# Usage: add-store.sh STORE_ID [BROKER_HOST]
#   KIT_DIR   where passwd/acl/ca.crt live (default /etc/mosquitto/store-agent)
#   RELOAD=0  do not reload mosquitto (the default reloads it so the login works at once)
# The password is written to $KIT_DIR/stores/STORE_ID.pass (0600): copy it to the store as
# /etc/store-agent/mqtt.pass (owner root, group store-agent, 0640), then delete it here.
set -euo pipefail
store="${1:-}"
[[ -n "$store" ]] || { echo "usage: add-store.sh STORE_ID [BROKER_HOST]" >&2; exit 2; }
host="${2:-broker.example.com}"
dir="${KIT_DIR:-/etc/mosquitto/store-agent}"
if [[ ! "$store" =~ ^[A-Za-z0-9_-]{1,64}$ ]]; then
    echo "add-store: '$store' is not a valid store_id ([A-Za-z0-9_-]{1,64})" >&2; exit 2
fi
case "$store" in hq|infodept) echo "add-store: '$store' is reserved for a non-store login" >&2; exit 2;; esac
command -v mosquitto_passwd >/dev/null || { echo "add-store: mosquitto_passwd not found (apt-get install mosquitto)" >&2; exit 1; }
mkdir -p "$dir/stores"
umask 077
pass="$(openssl rand -base64 24 | tr -d '/+=' | cut -c1-24)"
if [[ -f "$dir/passwd" ]]; then
    mosquitto_passwd -b "$dir/passwd" "$store" "$pass"
else
    mosquitto_passwd -c -b "$dir/passwd" "$store" "$pass"
fi
if getent group mosquitto >/dev/null; then chgrp mosquitto "$dir/passwd"; chmod 0640 "$dir/passwd"; fi
printf '%s\n' "$pass" > "$dir/stores/$store.pass"
if [[ "${RELOAD:-1}" != 0 ]]; then
    systemctl reload mosquitto 2>/dev/null || pkill -HUP -x mosquitto 2>/dev/null || true
fi
cat <<CONF
# store $store: put this in /etc/store-agent/config.toml (store_id = "$store")
[mqtt]
host = "$host"
port = 8883
username = "$store"
password_file = "/etc/store-agent/mqtt.pass"   # from $dir/stores/$store.pass
tls = true
ca_file = "/etc/store-agent/ca.crt"            # from $dir/ca.crt
CONF
