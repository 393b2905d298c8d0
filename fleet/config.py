"""The console's TOML file: ``--config``, else ``$STORE_FLEET_CONFIG``, else /etc/store-fleet/config.toml.

``[mqtt]`` has the agent's keys (agent.config.MqttConfig: host, port, topic_prefix, username, password or
password_file, tls, ca_file, cert_file, key_file, ...); the console's own sections follow. Unknown keys are
an error that names the key, as in the agent."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.config import ConfigError, MqttConfig, format_validation_error
from agent.mqtt import MqttSettings

DEFAULT_PATH = "/etc/store-fleet/config.toml"
ENV = "STORE_FLEET_CONFIG"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SigningSettings(_Model):
    key_file: str = Field("", description="the Ed25519 private key (PEM) every config/set and request is signed with "
                                          "(store-fleet keygen); empty: unsigned (agents with security.hq_public_key refuse)")


class WebSettings(_Model):
    listen: str = "127.0.0.1:8080"
    token: str = Field("", description="a bearer token (?token= or Authorization: Bearer)")
    users: dict[str, str] = Field(default_factory=dict, description="basic-auth logins: name = password")
    tls_cert: str = ""
    tls_key: str = ""


class ProblemSettings(_Model):
    queue_oldest_s: float = Field(300, description="a queue whose oldest job waits longer than this is a problem")
    health_stale_s: float = Field(600, description="an online store without health for this long is a problem")
    version: str = Field("", description="the agent version stores should run; empty: the newest one seen")


class StoreInfo(_Model):
    name: str = ""
    region: str = ""


class PushSettings(_Model):
    base_file: str = Field("", description="a representative store config file an overlay is checked against "
                                            "for stores whose config/state the console has not seen")
    answer_s: float = Field(60, gt=0, description="how long a store has to answer a config/set in its config/state")


class FleetConfig(_Model):
    mqtt: MqttConfig = MqttConfig()
    state_dir: str = Field("/var/lib/store-fleet", description="the console's history (history.sqlite3)")
    signing: SigningSettings = SigningSettings()
    web: WebSettings = WebSettings()
    problems: ProblemSettings = ProblemSettings()
    push: PushSettings = PushSettings()
    stores: dict[str, StoreInfo] = Field(default_factory=dict, description="names and regions by store id (optional)")

    @model_validator(mode="after")
    def _check(self) -> "FleetConfig":
        if bool(self.web.tls_cert) != bool(self.web.tls_key):
            raise ValueError("web.tls_cert and web.tls_key go together")
        return self

    @property
    def prefix(self) -> str:
        return self.mqtt.topic_prefix

    @property
    def history_path(self) -> Path:
        return Path(self.state_dir) / "history.sqlite3"

    def settings(self, role: str = "console") -> MqttSettings:
        """MQTT settings. The client id is ``mqtt.client_id`` or ``store-fleet-<role>-<host>-<pid>`` (on the broker kit
        the login is the client id: one login per running console, see docs/FLEET.md)."""
        m = self.mqtt
        password = m.password
        if m.password_file:
            try:
                password = Path(m.password_file).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ConfigError(f"mqtt.password_file: cannot read {m.password_file}: {e.strerror}") from None
        cid = m.client_id or f"store-fleet-{role}-{socket.gethostname()[:20]}-{os.getpid()}"
        return MqttSettings(host=m.host, port=m.port, client_id=cid, keepalive_s=m.keepalive_s, username=m.username,
                            password=password, tls=m.tls, ca_file=m.ca_file, cert_file=m.cert_file, key_file=m.key_file,
                            reconnect_min_s=m.reconnect_min_s, reconnect_max_s=m.reconnect_max_s)


def parse(data: dict[str, Any]) -> FleetConfig:
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def resolve(path: Optional[str]) -> Path:
    return Path(path or os.environ.get(ENV) or DEFAULT_PATH)


def load(path: Optional[str] = None) -> FleetConfig:
    p = resolve(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    try:
        return parse(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
