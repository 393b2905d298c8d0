#!/usr/bin/env python3
"""Print the systemd drop-in that lets store-agent reach its broker and webhook hosts.

The unit (store-agent.service) refuses every address but the local machine, link-local and the
private LAN ranges (IPAddressDeny=any). A broker or a robot on the internet needs its addresses
allowed: this reads config.toml (``mqtt.host``, ``[[escalation.notifiers]] url``, plus the DingTalk
and WeCom robot hosts, which HQ may configure remotely), resolves them now and prints
``[Service] IPAddressAllow=…`` lines. The installer writes the output to
/etc/systemd/system/store-agent.service.d/50-addresses.conf; run it again (``sudo ./install.sh``)
when the broker's or a robot's address changes.

Usage: ip-allow.py CONFIG.toml [--no-defaults]      (exit 0; hosts that do not resolve are listed
as comments and named on stderr)
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import tomllib
from urllib.parse import urlsplit

ROBOT_HOSTS = ("oapi.dingtalk.com", "qyapi.weixin.qq.com")
ALREADY_ALLOWED = [ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10",
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]


def hosts(cfg: dict, defaults: bool = True) -> list[str]:
    out = [str(cfg.get("mqtt", {}).get("host", "127.0.0.1"))]
    for n in cfg.get("escalation", {}).get("notifiers", []) or []:
        host = urlsplit(str(n.get("url", ""))).hostname
        if host:
            out.append(host)
    if defaults:
        out += ROBOT_HOSTS
    return list(dict.fromkeys(out))


def addresses(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return []
    return sorted({i[4][0].split("%")[0] for i in infos})


def dropin(cfg: dict, defaults: bool = True) -> tuple[str, list[str]]:
    lines = ["# written by install.sh from /etc/store-agent/config.toml (systemd/ip-allow.py); regenerate with",
             "# sudo ./install.sh after the broker or a webhook changes. Add your own lines in another drop-in.",
             "[Service]"]
    unresolved = []
    for host in hosts(cfg, defaults):
        addrs = [a for a in addresses(host) if not any(ipaddress.ip_address(a) in n for n in ALREADY_ALLOWED)]
        if not addresses(host):
            unresolved.append(host)
            lines.append(f"# {host}: did not resolve")
        elif not addrs:
            lines.append(f"# {host}: local or private, allowed by the unit")
        else:
            lines.append(f"# {host}")
            lines.append("IPAddressAllow=" + " ".join(addrs))
    return "\n".join(lines) + "\n", unresolved


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        with open(argv[0], "rb") as f:
            cfg = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        print(f"ip-allow: {argv[0]}: {e}", file=sys.stderr)
        return 1
    text, unresolved = dropin(cfg, defaults="--no-defaults" not in argv)
    sys.stdout.write(text)
    if unresolved:
        print(f"ip-allow: did not resolve: {', '.join(unresolved)} (not allowed; run again once they do)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
