#!/usr/bin/env bash
# The broker kit's private CA: the broker's server certificate, and client certificates for logins.
#
#   make-certs.sh BROKER_HOSTNAME [IP]    the CA (made once, valid 10 years) and the broker's server
#                                         certificate (valid $DAYS, default 825 days); run again to renew it
#   make-certs.sh --client NAME [OUTDIR]  a client certificate with CN=NAME (the login name when the broker
#                                         uses security.conf), NAME.crt + NAME.key into OUTDIR (default
#                                         $KIT_DIR/clients). Earlier certificates of NAME are revoked: the
#                                         CRL (crl.pem) is rewritten; a reload of mosquitto applies it.
#   make-certs.sh --revoke NAME           revoke every certificate of NAME (a lost or retired Pi), rewrite the CRL
#
# Files in $KIT_DIR (default /etc/mosquitto/store-agent): ca.crt (give to every store as mqtt.ca_file),
# ca.key (keep it offline or at least root-only: whoever holds it can mint logins), server.crt/.key,
# crl.pem (revoked client certificates, read by mosquitto's crlfile), ca-db/ (what was issued).
# Already have a company CA? Put its ca.crt and a server.crt/server.key it signed in $KIT_DIR instead,
# and issue client certificates with CN = login name from it.
set -euo pipefail
dir="${KIT_DIR:-/etc/mosquitto/store-agent}"
days="${DAYS:-825}"
umask 077

die() { echo "make-certs: $*" >&2; exit "${2:-1}"; }

ca_setup() {
    mkdir -p "$dir/ca-db/issued"
    [[ -f "$dir/ca-db/index.txt" ]] || : > "$dir/ca-db/index.txt"
    [[ -f "$dir/ca-db/crlnumber" ]] || echo 1000 > "$dir/ca-db/crlnumber"
    [[ -f "$dir/ca-db/serial" ]] || openssl rand -hex 16 > "$dir/ca-db/serial"
    cat > "$dir/ca-db/openssl.cnf" <<CNF
[ ca ]
default_ca = kit
[ kit ]
dir = $dir
database = \$dir/ca-db/index.txt
new_certs_dir = \$dir/ca-db/issued
certificate = \$dir/ca.crt
private_key = \$dir/ca.key
crlnumber = \$dir/ca-db/crlnumber
serial = \$dir/ca-db/serial
default_md = sha256
default_days = $days
default_crl_days = 3650
policy = any
unique_subject = no
copy_extensions = none
email_in_dn = no
[ any ]
commonName = supplied
[ client ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
CNF
}

gencrl() {
    openssl ca -config "$dir/ca-db/openssl.cnf" -gencrl -out "$dir/crl.pem" 2>/dev/null
    chmod 0644 "$dir/crl.pem"
}

# serials of the still-valid certificates issued to NAME (index.txt: status, expiry, revoked, serial, file, subject)
valid_serials() {
    awk -F'\t' -v subj="/CN=$1" '$1 == "V" && $6 == subj { print $4 }' "$dir/ca-db/index.txt"
}

revoke() {
    local name="$1" serial n=0
    for serial in $(valid_serials "$name"); do
        openssl ca -config "$dir/ca-db/openssl.cnf" -revoke "$dir/ca-db/issued/$serial.pem" \
            -crl_reason superseded 2>/dev/null || die "could not revoke certificate $serial of $name"
        n=$((n + 1))
    done
    gencrl
    echo "$n"
}

check_name() {
    [[ "$1" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "'$1' is not a valid login name ([A-Za-z0-9_-]{1,64})" 2
}

need_ca() {
    [[ -f "$dir/ca.key" && -f "$dir/ca.crt" ]] || die "no CA in $dir: run make-certs.sh BROKER_HOSTNAME first"
    ca_setup
}

case "${1:-}" in
    --client)
        name="${2:?usage: make-certs.sh --client NAME [OUTDIR]}"
        out="${3:-$dir/clients}"
        check_name "$name"
        need_ca
        mkdir -p "$out"
        revoked="$(revoke "$name")"
        openssl req -newkey rsa:2048 -nodes -subj "/CN=${name}" -keyout "$out/$name.key" -out "$out/$name.csr" 2>/dev/null
        openssl ca -config "$dir/ca-db/openssl.cnf" -batch -notext -rand_serial -extensions client \
            -in "$out/$name.csr" -out "$out/$name.crt" 2>/dev/null || die "could not sign the certificate of $name"
        rm -f "$out/$name.csr"
        chmod 0644 "$out/$name.crt"
        chmod 0600 "$out/$name.key"
        echo "client: $out/$name.crt + $name.key for login '$name', expires $(openssl x509 -enddate -noout -in "$out/$name.crt" | cut -d= -f2)" >&2
        [[ "$revoked" == 0 ]] || echo "revoked $revoked earlier certificate(s) of '$name': reload mosquitto to apply the CRL" >&2
        exit 0
        ;;
    --revoke)
        name="${2:?usage: make-certs.sh --revoke NAME}"
        check_name "$name"
        need_ca
        revoked="$(revoke "$name")"
        echo "revoked $revoked certificate(s) of '$name'; reload mosquitto to apply the CRL" >&2
        exit 0
        ;;
    -*|"")
        die "usage: make-certs.sh BROKER_HOSTNAME [IP] | --client NAME [OUTDIR] | --revoke NAME" 2
        ;;
esac

host="$1"
ip="${2:-}"
mkdir -p "$dir"
cd "$dir"
if [[ ! -f ca.key ]]; then
    openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=store-agent broker CA" \
        -keyout ca.key -out ca.crt 2>/dev/null
fi
chmod 0600 ca.key
ca_setup
san="DNS:${host}"
[[ -n "$ip" ]] && san="${san},IP:${ip}"
openssl req -newkey rsa:2048 -nodes -subj "/CN=${host}" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext
[[ -f crl.pem ]] || gencrl
chmod 0644 ca.crt server.crt crl.pem
chmod 0640 server.key
if getent group mosquitto >/dev/null; then chgrp mosquitto server.key; fi
echo "CA:     $dir/ca.crt (give to every store as mqtt.ca_file)"
echo "server: $dir/server.crt for ${san}, expires $(openssl x509 -enddate -noout -in server.crt | cut -d= -f2)"
echo "CRL:    $dir/crl.pem (revoked client certificates)"
