"""A private mosquitto for the demo and the tests: loopback only, the project's recommended settings."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

KIT = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
RECOMMENDED = KIT / "store-agent.conf"
SECURITY = KIT / "security.conf"
KIT_PATH = "/etc/mosquitto/store-agent/"


class BrokerError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mosquitto() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise BrokerError("mosquitto not found: install it (./install.sh --dev does, or apt-get install mosquitto)")


class DevBroker:
    """``with DevBroker(workdir) as b: b.port`` — a mosquitto on 127.0.0.1, persistence in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        port: Optional[int] = None,
        extra: str = "",
        *,
        tls: Optional[tuple[Path, Path, Path]] = None,
        password_file: Optional[Path] = None,
        kit_dir: Optional[Path] = None,
    ) -> None:
        """``tls`` = (ca, cert, key) makes the listener TLS-only; ``password_file`` turns off anonymous access.
        ``kit_dir``: the broker kit's security.conf as shipped, its /etc/mosquitto/store-agent/ files
        (passwd, acl, ca.crt, server.crt, server.key) taken from ``kit_dir``."""
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.extra = extra
        self.tls = tls
        self.password_file = password_file
        self.kit_dir = kit_dir
        self.proc: Optional[subprocess.Popen] = None

    def config_text(self) -> str:
        if not RECOMMENDED.exists():
            raise BrokerError(f"recommended broker settings not found at {RECOMMENDED} (run from a checkout)")
        user = pwd.getpwuid(os.getuid()).pw_name
        if self.kit_dir:
            listener = "\n" + SECURITY.read_text().replace(KIT_PATH, f"{self.kit_dir}/").replace(
                "\nlistener 8883\n", f"\nlistener {self.port} 127.0.0.1\n")
            if f"listener {self.port} 127.0.0.1" not in listener:
                raise BrokerError(f"{SECURITY}: no 'listener 8883' line to move to the test port")
        else:
            listener = f"\nlistener {self.port} 127.0.0.1\n"
            if self.tls:
                ca, cert, key = self.tls
                listener += f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
            if self.password_file:
                listener += f"allow_anonymous false\npassword_file {self.password_file}\n"
            else:
                listener += "allow_anonymous true\n"
        return (
            RECOMMENDED.read_text()
            + listener
            + f"persistence_location {self.workdir}/\nuser {user}\n"
            + f"log_dest file {self.workdir / 'mosquitto.log'}\nlog_type error\nlog_type warning\nlog_type notice\n"
            + self.extra
        )

    def start(self, timeout: float = 10.0) -> "DevBroker":
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        self.proc = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = (self.workdir / "mosquitto.log")
                raise BrokerError(f"mosquitto exited: {err} {log.read_text() if log.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout}s")

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def __enter__(self) -> "DevBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
