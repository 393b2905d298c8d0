#!/usr/bin/env bash
# store-agent installer.
#   ./install.sh --dev     in a checkout: system packages for the tests and the demo, .venv/, editable install
#   sudo ./install.sh      on Raspberry Pi OS (bookworm, 64-bit): system user, groups store-agent (secrets) and
#                          store-agent-cli (the CLI), /opt/store-agent venv, /etc/store-agent/config.toml (kept if
#                          present), file modes, udev rules, systemd unit and its network allow-list drop-in
# Both are idempotent: running them again changes nothing that is already in place.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DEV_PACKAGES=(mosquitto mosquitto-clients openssl libusb-1.0-0 alsa-utils libasound2-dev fonts-wqy-microhei espeak-ng python3-venv python3-dev gcc systemd nftables)
DEVICE_PACKAGES=(alsa-utils libasound2 libasound2-dev fonts-wqy-microhei espeak-ng python3-venv python3-dev gcc libusb-1.0-0)  # -dev, gcc: simpleaudio builds from source on aarch64 (.ci/aarch64-wheels.py)

log() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing system packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        log "system packages already installed"
    fi
}

pick_python() {
    for py in python3.12 python3.11 python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$py"; return
        fi
    done
    die "Python >= 3.11 is required"
}

dev_install() {
    apt_install "${DEV_PACKAGES[@]}"
    local py; py="$(pick_python)"
    if [ ! -x "$HERE/.venv/bin/python" ]; then
        log "creating .venv with $py"
        "$py" -m venv "$HERE/.venv"
    fi
    log "installing store-agent and store-fleet (editable) with test extras"
    "$HERE/.venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$HERE/.venv/bin/python" -m pip install -q -e "$HERE[test,fleet]"
    log "done: .venv/bin/store-agent demo   |   .venv/bin/pytest"
}

device_install() {
    [ "$(id -u)" -eq 0 ] || die "run as root: sudo ./install.sh"
    apt_install "${DEVICE_PACKAGES[@]}"
    users_and_groups
    local py; py="$(pick_python)"
    [ -x /opt/store-agent/bin/python ] || "$py" -m venv /opt/store-agent
    /opt/store-agent/bin/python -m pip install -q --upgrade pip >/dev/null
    /opt/store-agent/bin/python -m pip install -q "$HERE"
    ln -sf /opt/store-agent/bin/store-agent /usr/local/bin/store-agent
    install -d -m 0750 -o root -g store-agent /etc/store-agent
    local fresh=0
    if [ ! -e /etc/store-agent/config.toml ]; then
        install -m 0640 -o root -g store-agent "$HERE/deploy/config.example.toml" /etc/store-agent/config.toml
        fresh=1
    else
        log "kept existing /etc/store-agent/config.toml"
    fi
    secure_files
    install -D -m 0644 "$HERE/systemd/60-store-agent-printers.rules" /etc/udev/rules.d/60-store-agent-printers.rules
    { udevadm control --reload-rules && udevadm trigger --subsystem-match=usb; } 2>/dev/null || log "udev not running: rules apply at the next boot"
    install -D -m 0644 "$HERE/systemd/store-agent.service" /etc/systemd/system/store-agent.service
    address_dropin
    if [ ! -d /run/systemd/system ]; then
        log "systemd is not running here: unit installed; run the agent with: store-agent run"
        return
    fi
    systemctl daemon-reload
    systemctl enable store-agent.service
    if [ "$fresh" = 1 ]; then
        log "wrote /etc/store-agent/config.toml: set store_id, [mqtt] and [[printers]], then:"
        log "  sudo store-agent config check && sudo ./install.sh && sudo store-agent doctor"
        log "  (installing again allows the broker's address from the config, and starts the agent)"
    else
        systemctl restart store-agent.service
        log "store-agent installed and (re)started: systemctl status store-agent; store-agent doctor"
    fi
}

# Two groups (docs/SECURITY.md, "Local users and files"):
#   store-agent      the secrets' group: reads /etc/store-agent (config.toml, mqtt.pass, client.key). Only the
#                    store-agent user is in it.
#   store-agent-cli  the technicians' group: reaches the control socket (status, reprint, test page, ...),
#                    reads none of the secrets and none of the journal.
users_and_groups() {
    getent group store-agent >/dev/null || groupadd --system store-agent
    getent group store-agent-cli >/dev/null || groupadd --system store-agent-cli
    id store-agent >/dev/null 2>&1 || useradd --system --gid store-agent --home /var/lib/store-agent --shell /usr/sbin/nologin store-agent
    usermod -aG store-agent-cli store-agent
    for g in lp dialout audio gpio plugdev; do
        getent group "$g" >/dev/null && usermod -aG "$g" store-agent
    done
    # technicians added to store-agent by an earlier version move to store-agent-cli: the CLI keeps
    # working for them, the secrets stop being theirs
    local members u
    members="$(getent group store-agent | cut -d: -f4)"
    for u in ${members//,/ }; do
        [ "$u" = store-agent ] && continue
        usermod -aG store-agent-cli "$u"
        gpasswd -d "$u" store-agent >/dev/null
        log "moved $u from group store-agent (secrets) to store-agent-cli (the CLI)"
    done
}

# File modes, applied at every install (idempotent): secrets root:store-agent 0640; the state directory
# store-agent:store-agent-cli 0750 with everything in it private to the agent (the unit's UMask=0077
# keeps new files so; this also covers an agent run outside systemd, and files from earlier versions).
secure_files() {
    chown root:store-agent /etc/store-agent && chmod 0750 /etc/store-agent
    local f
    for f in /etc/store-agent/*; do
        [ -f "$f" ] || continue
        case "$f" in
            *.crt) chown root:store-agent "$f" && chmod 0644 "$f" ;;   # certificates are public
            *) chown root:store-agent "$f" && chmod 0640 "$f" ;;
        esac
    done
    install -d -m 0750 -o store-agent -g store-agent-cli /var/lib/store-agent
    chown store-agent:store-agent-cli /var/lib/store-agent && chmod 0750 /var/lib/store-agent
    find /var/lib/store-agent -mindepth 1 \( -type f -o -type d \) -exec chmod go-rwx {} +
}

# The unit allows only local and private addresses; the broker's and the robots' public addresses come
# from the config, in a drop-in (systemd/ip-allow.py).
address_dropin() {
    install -d -m 0755 /etc/systemd/system/store-agent.service.d
    local out=/etc/systemd/system/store-agent.service.d/50-addresses.conf
    if /opt/store-agent/bin/python "$HERE/systemd/ip-allow.py" /etc/store-agent/config.toml > "$out.tmp"; then
        chmod 0644 "$out.tmp" && mv "$out.tmp" "$out"
        log "network allow-list: $out ($(grep -c '^IPAddressAllow=' "$out") address lines)"
    else
        rm -f "$out.tmp"
        log "could not write $out: only local and private addresses are reachable"
    fi
}

uninstall() {
    [ "$(id -u)" -eq 0 ] || die "run as root: sudo ./install.sh --uninstall"
    systemctl disable --now store-agent.service 2>/dev/null || true
    rm -f /etc/systemd/system/store-agent.service /etc/udev/rules.d/60-store-agent-printers.rules /usr/local/bin/store-agent
    rm -f /etc/systemd/system/store-agent.service.d/50-addresses.conf
    rmdir /etc/systemd/system/store-agent.service.d 2>/dev/null || true
    systemctl daemon-reload 2>/dev/null || true
    rm -rf /opt/store-agent
    log "removed the program; kept /etc/store-agent (config), /var/lib/store-agent (journal) and the groups"
}

case "${1:-}" in
    --dev) dev_install ;;
    --uninstall) uninstall ;;
    "") device_install ;;
    -h|--help) sed -n '2,7p' "$0" ;;
    *) die "unknown option $1 (use --dev, --uninstall or nothing)" ;;
esac
