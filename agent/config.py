"""Configuration: the TOML file of the contract, loaded into pydantic models.

Unknown keys and bad values are a ``ConfigError`` whose message names the key
(``printers[0].hsot: unknown key``). No I/O happens here except reading the
file and an optional ``mqtt.password_file``.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drivers.audio import ALSA_DEVICE_PATTERN

from .messages import EventType as EventTypeName
from .rules import RuleOverride

DEFAULT_CONFIG_PATH = "/etc/store-agent/config.toml"
CONFIG_ENV = "STORE_AGENT_CONFIG"


class ConfigError(Exception):
    """A config file that cannot be used; the message names the key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreConfig(_Model):
    name: str = ""
    phone: str = ""


RESTART = {"requires_restart": True}  # schema mark: a remote change of this key restarts the agent (in-process)


class MqttConfig(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=RESTART)

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = Field("stores", pattern=r"^[^#+\s]+$")
    client_id: str = ""
    username: str = ""
    password: str = Field("", json_schema_extra={"secret": True})
    password_file: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: int = Field(30, ge=5, le=3600)
    session_expiry_s: int = Field(7 * 86400, ge=60, description="MQTT 5 session expiry; orders wait this long at the broker")
    receive_maximum: int = Field(16, ge=1, le=1024, description="bound on un-acked orders in flight")
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    probation_s: int = Field(120, ge=5, le=3600, description="a remote MQTT change that cannot connect and subscribe within this long reverts by itself")

    @model_validator(mode="after")
    def _check(self) -> "MqttConfig":
        if self.password and self.password_file:
            raise ValueError("set either password or password_file, not both")
        if self.tls is False and (self.cert_file or self.key_file or self.ca_file):
            raise ValueError("ca_file/cert_file/key_file need tls = true")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


class _PrinterBase(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    paper_width_mm: Literal[58, 80] = 80
    role: Literal["primary", "backup"] = "primary"
    timeout_s: float = Field(3.0, gt=0, le=60, description="I/O timeout for writes and status answers")
    status_query: bool = Field(True, description="ask DLE EOT status around every job; false for write-only ports")
    confirm: Literal["auto", "gs_r", "none"] = Field(
        "auto", description="auto: wait for GS r 1 after each job where the printer answers it (probed), else print "
                            "unconfirmed; gs_r: always (true is the same); none: never (false)")
    render: Literal["text", "image"] = Field("text", description="image: print tickets as raster images (printers without a Chinese font)")
    qr: Literal["auto", "native", "image"] = Field("auto", description="auto: from the profile; image: QR codes as raster images")
    cut: Literal["auto", "cut", "feed"] = Field("auto", description="auto: from the probe (GS I 2) or the profile; feed: feed to the tear bar")
    profile: str = Field("", description="an escpos-printer-db profile (store-agent printers profiles); "
                                         "default: from the probe, else generic for the paper width")
    charset: Literal["gb18030", "gbk", "gb2312", "big5"] = Field(
        "gb18030", description="the characters the printer's font holds; others are printed as small images")
    paper_roll_m: float = Field(0, ge=0, le=500, description="roll length for the paper-left forecast; 0: 50 m (80 mm), 30 m (58 mm)")

    @field_validator("confirm", mode="before")
    @classmethod
    def _confirm_bool(cls, v: Any) -> Any:
        return {True: "gs_r", False: "none"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str) -> str:
        if v:
            from drivers.escpos_caps import profiles  # noqa: PLC0415

            names = sorted(profiles())
            if v not in names:
                raise ValueError(f"unknown profile {v!r}; one of: {', '.join(names)}")
        return v

    @property
    def columns(self) -> int:
        return 32 if self.paper_width_mm == 58 else 48

    @property
    def roll_m(self) -> float:
        return self.paper_roll_m or (30.0 if self.paper_width_mm == 58 else 50.0)


class NetworkPrinterConfig(_PrinterBase):
    connection: Literal["network"]
    host: str
    port: int = Field(9100, ge=1, le=65535)


class UsbPrinterConfig(_PrinterBase):
    connection: Literal["usb"]
    vendor_id: int = Field(ge=0, le=0xFFFF)
    product_id: int = Field(ge=0, le=0xFFFF)


class SerialPrinterConfig(_PrinterBase):
    connection: Literal["serial"]
    device: str
    baudrate: int = 19200
    flow_control: Literal["none", "rtscts", "xonxoff", "dsrdtr"] = Field(
        "none", description="how the printer says its buffer is full, so a burst cannot overrun it")


class FilePrinterConfig(_PrinterBase):
    connection: Literal["file"]
    path: str = "/dev/usb/lp0"
    status_query: Literal[False] = Field(False, description="device files are write-only: no status answers")


class VirtualPrinterConfig(_PrinterBase):
    connection: Literal["virtual"]
    spool_dir: str = Field("", description="default: <state_dir>/spool/<name>")


PrinterConfig = Annotated[
    Union[NetworkPrinterConfig, UsbPrinterConfig, SerialPrinterConfig, FilePrinterConfig, VirtualPrinterConfig],
    Field(discriminator="connection"),
]


class HealthConfig(_Model):
    printer_poll_s: int = Field(5, ge=1, le=3600)
    publish_s: int = Field(60, ge=1, le=86400)
    clear_after_s: int = Field(10, ge=0, description="a printer fault clears only after this long ready again (a loose cable gives one alert)")
    stuck_after_s: int = Field(90, ge=3, description="a worker thread silent this long withholds the systemd watchdog ping (restart)")


DEFAULT_WEBHOOK_HOSTS = ("oapi.dingtalk.com", "qyapi.weixin.qq.com")


def _check_webhook_url(url: str) -> str:
    """https://host[:port]/path?query, no login: the host is checked against the allow-list
    by ``EscalationConfig``. Errors never repeat the URL (it carries the robot's token)."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme != "https":
        raise ValueError("webhook URLs must be https://")
    if not parts.hostname or "@" in parts.netloc:
        raise ValueError("webhook URLs name a host, without a login")
    return url


class NotifierConfig(_Model):
    kind: Literal["dingtalk", "wecom"]
    url: Annotated[str, AfterValidator(_check_webhook_url)] = Field(
        description="https:// only, its host in escalation.webhook_hosts; redirects are not followed")
    secret: str = Field("", description="DingTalk 加签 secret (signed robots)")

    @property
    def host(self) -> str:
        from urllib.parse import urlsplit  # noqa: PLC0415

        return (urlsplit(self.url).hostname or "").lower()


class EscalationConfig(_Model):
    printer_fault_after_s: int = Field(120, ge=0)
    renotify_s: int = Field(1800, ge=60, description="an escalated alert is sent again this often until cleared")
    notifiers: list[NotifierConfig] = Field(default_factory=list, description="DingTalk / WeCom group robots")
    webhook_hosts: list[Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")]] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_HOSTS),
        description="the only hosts notifier URLs may name (config file only; HQ cannot widen it)")

    @model_validator(mode="after")
    def _allowed_hosts(self) -> "EscalationConfig":
        allowed = set(self.webhook_hosts)
        for i, n in enumerate(self.notifiers):
            if n.host not in allowed:
                raise ValueError(f"notifiers[{i}].url: host not allowed (allowed: {', '.join(sorted(allowed)) or 'none'}; "
                                 "more in escalation.webhook_hosts of the config file)")
        return self


class JournalConfig(_Model):
    keep_days: int = Field(30, ge=1, le=3650, description="finished orders older than this are pruned")
    max_mb: int = Field(64, ge=1, description="the journal is pruned oldest-first to stay under this size")
    dedupe_days: int = Field(30, ge=1, le=3650, description="event ids and order ids are remembered this long "
                                                          "(after their rows are pruned), so a re-sent event never prints as new")


class IntakeConfig(_Model):
    max_payload_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024)
    redeliver_s: float = Field(10.0, gt=0, description="after a failed journal commit, reconnect after this so the broker resends")


class PrintConfig(_Model):
    retry_s: float = Field(2.0, ge=0.05, le=30, description="wait between attempts while a printer is not ready "
                                                           "(from HQ: at least 0.5)")
    max_attempts: int = Field(0, ge=0, description="0 = retry until printed; N = result 'failed' after N attempts")


def _check_alsa_device(device: str) -> str:
    if not re.fullmatch(ALSA_DEVICE_PATTERN, device):
        raise ValueError("only default, sysdefault[:N], hw:N[,M] or plughw:N[,M] (other ALSA names can run commands)")
    return device


class SoundConfig(_Model):
    enabled: bool = Field(True, json_schema_extra=RESTART)
    device: Annotated[str, AfterValidator(_check_alsa_device)] = Field(
                        "default", description="ALSA device: default, sysdefault[:N], hw:N[,M] or plughw:N[,M] (nothing else reaches "
                        "aplay); simpleaudio plays only to 'default', others go through aplay -D", json_schema_extra=RESTART)
    volume: float = Field(0.8, ge=0, le=1)
    quiet_hours: str = Field("", pattern=r"^$|^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$",
                             description='"22:00-07:30": chimes muted (LEDs still show), local time')
    quiet_volume: float = Field(0.0, ge=0, le=1, description="volume during quiet hours (0 = silent)")


class GpioConfig(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=RESTART)

    enabled: bool = Field(False, description="LEDs and the acknowledge button are optional hardware")
    pin_factory: Literal["", "mock", "lgpio", "rpigpio"] = ""
    exception_led: Optional[int] = Field(17, ge=0, le=27)
    status_led: Optional[int] = Field(27, ge=0, le=27)
    button: Optional[int] = Field(22, ge=0, le=27)
    hold_s: float = Field(2.0, gt=0, description="holding the button this long prints a test page")


def _check_hhmm(v: str) -> str:
    if v and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v):
        raise ValueError('a local time "HH:MM" (24 h), or "" for off')
    return v


class VoiceConfig(_Model):
    enabled: bool = Field(True, description="speak a phrase after the chime (rules.<type>.voice, voice.phrases)")
    clips_dir: str = Field("", description="recorded clips <segment>.wav (美团.wav, 23.wav or 2.wav 3.wav, 号新订单.wav); "
                                           "what has no clip is synthesised by espeak-ng")
    voice: str = Field("cmn", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{1,12}){0,2}$", description="espeak-ng voice (cmn: Mandarin)")
    speed: int = Field(190, ge=80, le=400, description="words per minute")
    cache_mb: int = Field(16, ge=1, le=512, description="synthesised segments are cached in state_dir/voice-cache up to this size")
    phrases: dict[str, Annotated[str, Field(max_length=60)]] = Field(
        default_factory=dict, description='device-fault phrases by alert code, e.g. "printer.paper_out" = "打印机缺纸" '
                                          '(built-in ones: agent/voice.py DEFAULT_PHRASES; "" = none)')


class ReportConfig(_Model):
    daily_at: Annotated[str, AfterValidator(_check_hhmm)] = Field(
        "22:00", description='the daily report slip at this local time ("" = no slips)')
    weekly_on: Literal["", "mon", "tue", "wed", "thu", "fri", "sat", "sun"] = Field(
        "sun", description="the weekly report slip (the 7 days ending that day) on this day, at daily_at (\"\" = off)")
    monthly: bool = Field(True, description="the monthly report slip (the month before) on the 1st, at daily_at")
    keep_days: int = Field(400, ge=31, le=3650, description="per-day figures are kept this long (after order rows are pruned)")
    publish_s: int = Field(300, ge=10, le=86400, description="retained P/S/stats (today's figures) at most this often")


class FollowupConfig(_Model):
    after_h: float = Field(24, ge=1, le=240, description="an order is due for its follow-up call this long after delivery")
    before_h: float = Field(48, ge=2, le=168, description="... and until this long after (then it is overdue and left out)")
    print_at: Annotated[str, AfterValidator(_check_hhmm)] = Field(
        "09:30", description='the follow-up list slip at this local time each day ("" = no slip)')
    max_items: int = Field(2, ge=0, le=10, description="items named per order on the list")

    @model_validator(mode="after")
    def _window(self) -> "FollowupConfig":
        if self.before_h <= self.after_h:
            raise ValueError("before_h must be greater than after_h")
        return self


class TimersConfig(_Model):
    prep_before_s: int = Field(1800, ge=0, description="prep reminder this long before a delivery window (0 = off)")
    unshipped_after_s: int = Field(3600, ge=60, description="an order not shipped this long after it was placed is listed")
    summary_every_s: int = Field(1800, ge=0, description="unshipped-orders summary interval (0 = off)")
    check_s: int = Field(30, ge=1, le=3600, description="how often the timers look at the journal")


TemplateName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
TemplateSource = Annotated[str, Field(max_length=65536)]


def _check_templates(custom: dict[str, str]) -> dict[str, str]:
    from .templating import check_source  # noqa: PLC0415

    for name, source in custom.items():
        check_source(name, source)
    return custom


class TemplatesConfig(_Model):
    dir: str = Field("", description="a directory of .j2 templates that replace built-ins of the same name")
    custom: Annotated[dict[TemplateName, TemplateSource], AfterValidator(_check_templates)] = Field(
        default_factory=dict,
        description="template sources by name (receipt, warm_tip, slip_order_cancelled, ...): replace the directory's "
        "and the built-ins; sent by HQ in config/set, rendered in Jinja2's sandbox",
    )


def _check_texts(texts: dict[str, Union[str, list[str]]]) -> dict[str, Union[str, list[str]]]:
    from .wording import DEFAULT_TEXTS  # noqa: PLC0415

    unknown = sorted(set(texts) - set(DEFAULT_TEXTS))
    if unknown:
        raise ValueError(f"unknown text key(s): {', '.join(unknown)}")
    for k, v in texts.items():
        if isinstance(DEFAULT_TEXTS[k], list) != isinstance(v, list):
            raise ValueError(f"{k}: must be {'a list of strings' if isinstance(DEFAULT_TEXTS[k], list) else 'a string'}")
    return texts


class RemoteSettings(_Model):
    epoch: int = Field(0, ge=0, le=2**31, description="config file only: raising it drops the stored remote overlay "
                       "at the next start and HQ's versions count from 0 again (recovery from a lock-out)")


class SecurityConfig(_Model):
    hq_public_key: Union[str, list[str]] = Field(
        "", description="config file only: HQ's Ed25519 public key(s), `ed25519:<base64>` (store-fleet keygen); when set, "
        "config/set and requests must be signed with one of them (a list while a key is being rotated)")
    replay_window_s: int = Field(300, ge=10, le=86400, description="a signed request older (or further ahead) than "
                                 "this is refused, and a nonce seen within it is a replay")

    @field_validator("hq_public_key")
    @classmethod
    def _keys_parse(cls, v: Union[str, list[str]]) -> Union[str, list[str]]:
        from .signing import SigningError, parse_public_key  # noqa: PLC0415

        for k in [v] if isinstance(v, str) else v:
            if k:
                try:
                    parse_public_key(k)
                except SigningError as e:
                    raise ValueError(str(e)) from None
        return v

    @property
    def hq_public_keys(self) -> list[str]:
        return [k for k in ([self.hq_public_key] if isinstance(self.hq_public_key, str) else self.hq_public_key) if k]


class Config(_Model):
    store_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="fixed by the config file; config/set cannot change it")
    state_dir: str = Field("/var/lib/store-agent", description="fixed by the config file; config/set cannot change it")
    store: StoreConfig = StoreConfig()
    mqtt: MqttConfig = MqttConfig()
    printers: list[PrinterConfig] = Field(min_length=1, description="at least one printer (a virtual one prints to files)")
    health: HealthConfig = HealthConfig()
    escalation: EscalationConfig = EscalationConfig()
    journal: JournalConfig = JournalConfig()
    intake: IntakeConfig = IntakeConfig()
    print: PrintConfig = PrintConfig()
    templates: TemplatesConfig = TemplatesConfig()
    sound: SoundConfig = SoundConfig()
    timers: TimersConfig = TimersConfig()
    voice: VoiceConfig = VoiceConfig()
    report: ReportConfig = ReportConfig()
    followup: FollowupConfig = FollowupConfig()
    gpio: GpioConfig = GpioConfig()
    remote: RemoteSettings = RemoteSettings()
    security: SecurityConfig = SecurityConfig()
    rules: dict[EventTypeName, RuleOverride] = Field(default_factory=dict, description="per event type, see agent/rules.py")
    texts: Annotated[dict[str, Union[str, list[str]]], AfterValidator(_check_texts)] = Field(
        default_factory=dict, description="override any ticket wording (see agent/wording.py for the keys)"
    )

    @model_validator(mode="after")
    def _unique_printers(self) -> "Config":
        names = [p.name for p in self.printers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"printer names must be unique: {', '.join(sorted(dup))}")
        for type_, rule in self.rules.items():
            if rule.printer and rule.printer not in names:
                raise ValueError(f"rules.{type_}.printer: no printer named {rule.printer!r}")
        return self

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"store-agent-{self.store_id}"

    def mqtt_password(self) -> str:
        if self.mqtt.password_file:
            try:
                return Path(self.mqtt.password_file).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ConfigError(f"mqtt.password_file: cannot read {self.mqtt.password_file}: {e.strerror}") from e
        return self.mqtt.password


def _restart_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    if model.model_config.get("json_schema_extra") == RESTART:
        return [prefix.rstrip(".")]
    out = []
    for name, field in model.model_fields.items():
        if field.json_schema_extra == RESTART:
            out.append(prefix + name)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += _restart_paths(field.annotation, f"{prefix}{name}.")
    return out


def restart_needed(old: Config, new: Config) -> list[str]:
    """The changed keys that are marked ``requires_restart`` in the schema (mqtt, gpio, sound.enabled/device)."""

    def get(cfg: Config, path: str) -> Any:
        obj: Any = cfg
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    return [path for path in _restart_paths(Config) if get(old, path) != get(new, path)]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch: objects merge key by key, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def config_data(cfg: Config) -> dict[str, Any]:
    """The keys that were set (as in the file), as plain data: the base a remote overlay merges onto."""
    return cfg.model_dump(mode="json", exclude_unset=True)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("network", "usb", "serial", "file", "virtual") and out.endswith("]"):
            continue  # discriminator tag pydantic inserts into the path
        else:
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = _loc(e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            secret = any(str(part) in SECRET_KEYS or str(part) in NO_ECHO_KEYS for part in e["loc"])
            shown = repr(e.get("input"))
            if "input" in e and not isinstance(e["input"], (dict, list)) and not secret and len(shown) <= 80 \
                    and e["type"] != "json_invalid":
                msg += f" (got {shown})"
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def parse_config(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def resolve_path(path: str | os.PathLike[str] | None) -> Path:
    return Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    p = resolve_path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    try:
        return parse_config(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


SECRET_KEYS = {"password", "secret", "key_file"}
NO_ECHO_KEYS = {"url", "device"}  # values never repeated in an error: a URL carries its token, a device may be an exploit


def _redact_url(url: Any) -> Any:
    """Webhook URLs carry their token in the query (DingTalk access_token=, WeCom key=) and may carry a
    login (``user:password@``): both are dropped, the scheme, host, port and path stay."""
    if not isinstance(url, str):
        return url
    from urllib.parse import urlsplit, urlunsplit  # noqa: PLC0415

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "***"
    netloc = ("***@" if "@" in parts.netloc else "") + host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def redacted(cfg: Config) -> dict[str, Any]:
    """The config as plain data with secrets replaced by "***" (for config show and config/state)."""

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: ("***" if k in SECRET_KEYS and v else _redact_url(v) if k == "url" else walk(v)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    return walk(cfg.model_dump(mode="json"))
