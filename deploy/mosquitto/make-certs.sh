#!/usr/bin/env bash
# A private CA and a server certificate for the broker (valid 825 days).
# Usage: make-certs.sh BROKER_HOSTNAME [IP]     (writes into $KIT_DIR, default /etc/mosquitto/store-agent)
# Copy ca.crt to every store (/etc/store-agent/ca.crt, mqtt.ca_file). Keep ca.key offline.
# Already have a company CA? Put its ca.crt, and a server.crt/server.key it signed, in $KIT_DIR instead.
set -euo pipefail
host="${1:?usage: make-certs.sh BROKER_HOSTNAME [IP]}"
ip="${2:-}"
dir="${KIT_DIR:-/etc/mosquitto/store-agent}"
days="${DAYS:-825}"
mkdir -p "$dir"
cd "$dir"
umask 077
if [[ ! -f ca.key ]]; then
    openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=store-agent broker CA" \
        -keyout ca.key -out ca.crt 2>/dev/null
fi
san="DNS:${host}"
[[ -n "$ip" ]] && san="${san},IP:${ip}"
openssl req -newkey rsa:2048 -nodes -subj "/CN=${host}" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext
chmod 0644 ca.crt server.crt
chmod 0640 server.key
if getent group mosquitto >/dev/null; then chgrp mosquitto server.key; fi
echo "CA:     $dir/ca.crt (give to every store as mqtt.ca_file)"
echo "server: $dir/server.crt for ${san}, expires $(openssl x509 -enddate -noout -in server.crt | cut -d= -f2)"
