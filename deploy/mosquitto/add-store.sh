#!/usr/bin/env bash
# Add (or re-key) a store on the broker and print the [mqtt] section for its config.
#
#   add-store.sh STORE_ID [BROKER_HOST]              a client certificate (recommended; security.conf)
#   add-store.sh --password STORE_ID [BROKER_HOST]   a password login (the simpler option; security-password.conf)
#
#   KIT_DIR   where passwd/acl/ca.crt/ca.key live (default /etc/mosquitto/store-agent)
#   RELOAD=0  do not reload mosquitto (the default reloads the mosquitto service so the change applies at once:
#             systemctl reload mosquitto, else a SIGHUP to the pid in $MOSQUITTO_PIDFILE, /run/mosquitto/mosquitto.pid)
#
# Certificate: STORE_ID.crt + STORE_ID.key (CN = STORE_ID, signed by the kit's CA) land in
# $KIT_DIR/stores/. Earlier certificates of the store are revoked (crl.pem) and a password the store
# may still have is removed: re-keying a store locks out whoever holds its old key or password.
# Password: a random password, or the first line of standard input when it is not a terminal
# (`add-store.sh --password cq-0231 < file`); it never appears on a command line. It is written to
# $KIT_DIR/stores/STORE_ID.pass (0600).
# Copy the files to the store (owner root, group store-agent, mode 0640), then delete them here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mode=cert
if [[ "${1:-}" == "--password" ]]; then mode=password; shift; fi
store="${1:-}"
[[ -n "$store" && "$store" != -* ]] || { echo "usage: add-store.sh [--password] STORE_ID [BROKER_HOST]" >&2; exit 2; }
host="${2:-broker.example.com}"
dir="${KIT_DIR:-/etc/mosquitto/store-agent}"
if [[ ! "$store" =~ ^[A-Za-z0-9_-]{1,64}$ ]]; then
    echo "add-store: '$store' is not a valid store_id ([A-Za-z0-9_-]{1,64})" >&2; exit 2
fi
case "$store" in hq|infodept|tech) echo "add-store: '$store' is reserved for a non-store login" >&2; exit 2;; esac
command -v mosquitto_passwd >/dev/null || { echo "add-store: mosquitto_passwd not found (apt-get install mosquitto)" >&2; exit 1; }
umask 077
mkdir -p "$dir/stores"

# Reload the mosquitto *service* (never every mosquitto on the host: a test or demo broker may run beside it):
# systemd's unit, else the pid in the service's pid file.
reload() {
    if [[ "${RELOAD:-1}" != 0 ]]; then
        if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
            systemctl reload mosquitto && return 0
        fi
        local pidfile="${MOSQUITTO_PIDFILE:-/run/mosquitto/mosquitto.pid}"
        if [[ -s "$pidfile" ]] && kill -HUP "$(cat "$pidfile")" 2>/dev/null; then
            return 0
        fi
        echo "add-store: could not reload mosquitto (no active service, no $pidfile): reload it yourself" >&2
    fi
}

if [[ "$mode" == cert ]]; then
    [[ -f "$dir/ca.key" ]] || { echo "add-store: no CA key in $dir: run make-certs.sh first (or use --password)" >&2; exit 1; }
    KIT_DIR="$dir" "$here/make-certs.sh" --client "$store" "$dir/stores"
    # a password left from an earlier password login must not keep working beside the certificate
    if [[ -f "$dir/passwd" ]] && grep -q "^${store}:" "$dir/passwd"; then
        mosquitto_passwd -D "$dir/passwd" "$store"
        echo "add-store: removed the password login of '$store'" >&2
    fi
    rm -f "$dir/stores/$store.pass"
    reload
    cat <<CONF
# store $store: put this in /etc/store-agent/config.toml (store_id = "$store")
[mqtt]
host = "$host"
port = 8883
tls = true
ca_file = "/etc/store-agent/ca.crt"            # from $dir/ca.crt
cert_file = "/etc/store-agent/client.crt"      # from $dir/stores/$store.crt
key_file = "/etc/store-agent/client.key"       # from $dir/stores/$store.key (root:store-agent, 0640)
CONF
    exit 0
fi

pass=""
if [[ ! -t 0 ]]; then
    IFS= read -r pass || true
fi
if [[ -z "$pass" ]]; then
    pass="$(openssl rand -base64 24 | tr -d '/+=\n' | cut -c1-24)"
fi
[[ "$pass" != *:* ]] || { echo "add-store: the password must not contain ':'" >&2; exit 2; }
[[ -f "$dir/passwd" ]] || : > "$dir/passwd"
# mosquitto_passwd asks for the password twice on its standard input (printf is a shell builtin:
# the password is on no process's command line)
printf '%s\n%s\n' "$pass" "$pass" | mosquitto_passwd "$dir/passwd" "$store" >/dev/null
if getent group mosquitto >/dev/null; then chgrp mosquitto "$dir/passwd"; chmod 0640 "$dir/passwd"; fi
printf '%s\n' "$pass" > "$dir/stores/$store.pass"
reload
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
