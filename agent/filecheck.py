"""The files a config names (TLS CA, client certificate and key, password file, template directory):
there, readable, and what they claim to be. ``config check`` and ``run`` refuse a config whose files
would make the agent fail later with an error naming no path; every problem names the key and the path.

Expiry is reported (``config check`` fails on an expired certificate) but ``run`` starts anyway: the
journal's queued tickets still print while the broker refuses the connection.
"""

from __future__ import annotations

import os
import pwd
import ssl
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from .config import Config

SERVICE_USER = "store-agent"


@dataclass(frozen=True)
class FileProblem:
    key: str
    path: str
    reason: str
    fatal: bool = True  # run refuses to start (False: reported, the agent can still print what it holds)

    def __str__(self) -> str:
        return f"{self.key}: {self.path}: {self.reason}"


def cert_days_left(path: str) -> Optional[float]:
    """Days until a PEM certificate's notAfter (negative: expired); None if it does not parse."""
    try:
        info = ssl._ssl._test_decode_cert(path)  # noqa: SLF001 - the only stdlib way to read notAfter from a file
        not_after = datetime.strptime(info["notAfter"], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=timezone.utc)
        return (not_after - datetime.now(timezone.utc)).total_seconds() / 86400
    except (OSError, ValueError, KeyError, ssl.SSLError):
        return None


def _service_uid(cfg: Config) -> Optional[int]:
    """The service user's uid when this is the service's config (its state_dir belongs to that user)
    and we run as root (install, a technician with sudo); else None."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(SERVICE_USER)
        return user.pw_uid if os.stat(cfg.state_dir).st_uid == user.pw_uid else None
    except (KeyError, OSError):
        return None  # no service user, or not its config (a development checkout, tests)


def _service_user_cannot_read(st: os.stat_result) -> bool:
    """Would the service user be refused this file?"""
    user = pwd.getpwnam(SERVICE_USER)
    groups = set(os.getgrouplist(SERVICE_USER, user.pw_gid))
    if st.st_uid == user.pw_uid:
        return not st.st_mode & stat.S_IRUSR
    if st.st_gid in groups:
        return not st.st_mode & stat.S_IRGRP
    return not st.st_mode & stat.S_IROTH


def _readable(key: str, path: str, *, directory: bool = False, service: bool = False) -> Optional[FileProblem]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return FileProblem(key, path, "does not exist")
    except OSError as e:
        return FileProblem(key, path, f"cannot be reached ({e.strerror})")
    if directory != stat.S_ISDIR(st.st_mode):
        return FileProblem(key, path, "is a directory, not a file" if not directory else "is not a directory")
    if not os.access(path, os.R_OK):
        return FileProblem(key, path, "is not readable by this user (check its owner and mode)")
    if service and _service_user_cannot_read(st):
        return FileProblem(key, path, f"is not readable by the service user {SERVICE_USER} "
                                      f"(chgrp {SERVICE_USER} and chmod g+r, or run ./install.sh again)")
    return None


def check_files(cfg: Config) -> list[FileProblem]:
    out: list[FileProblem] = []
    m = cfg.mqtt
    service = _service_uid(cfg) is not None
    for key in ("ca_file", "cert_file", "key_file", "password_file"):
        path = getattr(m, key, "") or ""
        if path:
            p = _readable(f"mqtt.{key}", path, service=service)
            if p:
                out.append(p)
    bad = {p.key for p in out}
    for key in ("ca_file", "cert_file"):
        path = getattr(m, key, "") or ""
        if path and f"mqtt.{key}" not in bad:
            days = cert_days_left(path)
            if days is None:
                out.append(FileProblem(f"mqtt.{key}", path, "is not a PEM certificate"))
            elif days < 0:
                out.append(FileProblem(f"mqtt.{key}", path, f"expired {-days:.0f} day(s) ago", fatal=False))
    if m.cert_file and m.key_file and not bad & {"mqtt.cert_file", "mqtt.key_file"} \
            and not any(p.key == "mqtt.cert_file" and p.fatal for p in out):
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(m.cert_file, m.key_file)
        except (ssl.SSLError, OSError) as e:
            out.append(FileProblem("mqtt.key_file", m.key_file, f"is not the key of {m.cert_file} ({e.__class__.__name__})"))
    if cfg.templates.dir:
        p = _readable("templates.dir", cfg.templates.dir, directory=True, service=service)
        if p:
            out.append(p)
    return out


def state_dir_problem(cfg: Config) -> Optional[FileProblem]:
    """``state_dir`` must be a directory this user can write (created when missing)."""
    p = Path(cfg.state_dir)
    if p.exists() and not p.is_dir():
        return FileProblem("state_dir", str(p), "is not a directory")
    if p.exists() and not os.access(p, os.W_OK | os.X_OK):
        return FileProblem("state_dir", str(p), "is not writable by this user")
    return None
