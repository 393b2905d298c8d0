"""Which login a technician's tool (``send``, ``doctor``) may use, so that no tool takes over a session.

With the broker kit a login *is* its client id (``use_username_as_clientid``): a second client with
the same login disconnects the first. So a tool never logs in as:

* the store itself while its agent is connected (its retained ``status`` is ``online``): that kicks
  the live agent;
* ``hq`` or ``infodept``: the logins of HQ's order system and the info department's dashboards,
  connected all day.

The kit's ``tech`` login exists for tools: it may publish test orders and read results, status,
health and alerts, and no agent or HQ system uses it. ``--take-over`` overrides the refusal.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import Config

# logins that production systems hold all day (deploy/mosquitto/acl)
PRODUCTION_LOGINS = {
    "hq": "HQ's order system",
    "infodept": "the info department's dashboards and on-call tools",
}
TECH_LOGIN = "tech"


class LoginRefused(Exception):
    """Logging in with this login would take over someone's session."""


def cert_cn(path: str) -> str:
    """The CN of a PEM certificate ('' when it cannot be read): the login under the kit's certificate mode."""
    try:
        info = ssl._ssl._test_decode_cert(path)  # noqa: SLF001 - stdlib only: no extra dependency for one field
    except (OSError, ssl.SSLError, ValueError):
        return ""
    for rdn in info.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


@dataclass(frozen=True)
class ToolLogin:
    """A login given on a tool's command line (a password login, or a client certificate)."""

    username: str = ""
    password_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @property
    def given(self) -> bool:
        return bool(self.username or self.cert_file)

    @property
    def name(self) -> str:
        """The login the broker sees: the certificate's CN (the kit's certificate mode), else the username."""
        return (cert_cn(self.cert_file) if self.cert_file else "") or self.username

    def password(self) -> str:
        return Path(self.password_file).read_text(encoding="utf-8").strip() if self.password_file else ""

    def settings(self, cfg: Config, client_id: str = ""):  # noqa: ANN201 - MqttSettings (paho imported lazily)
        from .mqtt import MqttSettings  # noqa: PLC0415

        m = cfg.mqtt
        return MqttSettings(m.host, m.port, client_id or f"store-agent-tool-{os.getpid()}", username=self.username,
                            password=self.password(), tls=m.tls, ca_file=m.ca_file, cert_file=self.cert_file,
                            key_file=self.key_file, session_expiry_s=0)


def store_login(cfg: Config) -> str:
    """The login this store's agent uses: its username, or the CN of its client certificate."""
    m = cfg.mqtt
    return m.username or (cert_cn(m.cert_file) if m.cert_file else "")


def refusal(cfg: Config, login: str, *, take_over: bool = False) -> Optional[str]:
    """Why a tool must not log in as ``login`` (None: it may). The store's own login is always refused to
    ``send`` (its ACL cannot publish orders either); production logins unless ``take_over``."""
    if login and login in (store_login(cfg), cfg.store_id):
        return (f"{login} is this store's own login: logging in with it takes over the running agent's session "
                f"(with the broker kit a login is its client id). Use the kit's {TECH_LOGIN} login "
                f"(--username {TECH_LOGIN} --password-file FILE, or --cert-file/--key-file of {TECH_LOGIN}.crt)")
    if login in PRODUCTION_LOGINS and not take_over:
        return (f"{login} is the login of {PRODUCTION_LOGINS[login]}, connected all day: logging in with it "
                f"disconnects that system (with the broker kit a login is its client id). Use the kit's "
                f"{TECH_LOGIN} login (docs/BROKER.md), or pass --take-over if that system is known to be off")
    return None


def anonymous_ok(cfg: Config) -> bool:
    """The store logs in with no username and no certificate (a private or development broker): then a tool
    can connect with its own client id and take over nobody."""
    return not cfg.mqtt.username and not cfg.mqtt.cert_file
