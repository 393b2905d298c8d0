"""The local control socket: the CLI talks to the running daemon through it.

A Unix socket ``<state_dir>/control.sock``, mode 0660, one JSON request per line
(``{"command": "...", "args": {...}}``) answered by one JSON line in the command reply shape.
Nothing listens on the network.

Who may connect: the agent's user and the ``store-agent-cli`` group (``CLI_GROUP``), which is not the
``store-agent`` group that reads the secrets (config.toml, mqtt.pass, client.key): a technician can
print a test page without being able to read the store's key. ``ControlServer.start`` gives the socket
that group when it exists (the systemd unit runs the agent with it as its primary group, so the
socket is created with it anyway). Each request is logged with the caller's uid (SO_PEERCRED); at
most ``MAX_CLIENTS`` connections are served at once, so a local flood cannot exhaust the unit's
TasksMax.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024
CLI_GROUP = "store-agent-cli"
MAX_CLIENTS = 8
DEFAULT_STATE_DIR = "/var/lib/store-agent"


def socket_group(path: Path, group: Optional[str] = None) -> Optional[int]:
    """Give ``path`` the group ``group`` (default ``CLI_GROUP``) if it exists and this process may (root,
    or a member); the gid set, or None (no such group: a laptop; not a member: the file keeps the
    process's group)."""
    group = group or CLI_GROUP
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return None
    if os.stat(path).st_gid == gid:
        return gid
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        log.warning("control socket: cannot give %s the group %s (add this user to it): technicians in "
                    "%s cannot use the CLI", path, group, group)
        return None
    return gid


def state_dir_for(config_path: Optional[str], on_config_error: Optional[Callable[[str], None]] = None) -> str:
    """The state directory whose socket the CLI calls. A technician in ``store-agent-cli`` may not read
    config.toml (it names the secrets' files and may hold webhook secrets): then the default
    state_dir is used, which is where the device install puts it. A config with a mistake in it
    (edited since the agent started) still names its state_dir: ``on_config_error`` is told the
    error and the running agent is reached anyway (it runs with the config it started with)."""
    from .config import ConfigError, load_config, resolve_path  # noqa: PLC0415

    try:
        return load_config(config_path).state_dir
    except ConfigError as e:
        p = resolve_path(config_path)
        try:
            p.open("rb").close()
        except PermissionError:
            return DEFAULT_STATE_DIR
        except OSError:
            raise e from None
        if on_config_error is None:
            raise
        on_config_error(str(e))
        return raw_state_dir(p)


def raw_state_dir(path: Path) -> str:
    """``state_dir`` as written in a config file that does not validate (or is not even TOML), else the default."""
    import re  # noqa: PLC0415
    import tomllib  # noqa: PLC0415

    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return DEFAULT_STATE_DIR
    try:
        value = tomllib.loads(text).get("state_dir")
    except tomllib.TOMLDecodeError:
        m = re.search(r'^\s*state_dir\s*=\s*["\']([^"\']+)["\']', text, re.M)
        value = m.group(1) if m else None
    return value if isinstance(value, str) and value else DEFAULT_STATE_DIR


def _peer_uid(conn: socket.socket) -> Optional[int]:
    try:
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return uid
    except (OSError, AttributeError, struct.error):
        return None


class ControlError(Exception):
    """The agent could not be asked. ``kind``: ``not_running`` (no socket), ``permission`` (this user may not
    use the socket: sudo, or the store-agent-cli group), ``unreachable`` (a socket nobody answers on)."""

    def __init__(self, message: str, kind: str = "unreachable") -> None:
        super().__init__(message)
        self.kind = kind


class ControlServer:
    client_timeout_s = 10.0  # a client that connects and says nothing holds its slot this long
    busy_wait_s = 5.0  # with MAX_CLIENTS busy, a new client waits this long for a slot, then is refused

    def __init__(self, path: Path, handler: Callable[[str, Any], dict]) -> None:
        self.path = Path(path)
        self.handler = handler
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)

    def start(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)  # created 0660: no one outside the owner and group
        try:
            s.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        socket_group(self.path)
        s.listen(4)  # accept() blocks (no timeout: nothing to do while no one asks); stop() shuts it down
        self._sock = s
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._sock:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # Linux: wakes the blocked accept() (EINVAL)
            except OSError:
                pass
            self._sock.close()
        if self._thread:
            self._thread.join(5)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        failing = ""  # the last accept() error logged (once, not ten times a second)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError as e:  # stop() shut the socket down; or no file descriptor left (EMFILE): not a busy loop
                if not self._stop.is_set() and str(e) != failing:
                    failing = str(e)
                    log.warning("control socket: accept failed: %s (retrying)", e)
                self._stop.wait(0.1)
                continue
            failing = ""
            if not self._slots.acquire(timeout=self.busy_wait_s):  # all busy: refuse, do not pile up threads
                log.warning("control socket: %d clients busy, refusing one", MAX_CLIENTS)
                conn.close()
                continue
            try:
                threading.Thread(target=self._client, args=(conn,), name="control-client", daemon=True).start()
            except RuntimeError as e:  # no thread left (TasksMax): drop this client, keep serving
                log.warning("control socket: cannot serve a client: %s", e)
                conn.close()
                self._slots.release()

    def _client(self, conn: socket.socket) -> None:
        try:
            self._answer(conn)
        finally:
            self._slots.release()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.client_timeout_s)
            try:
                data = b""
                while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                try:
                    req = json.loads(data.decode("utf-8"))
                    if not isinstance(req, dict) or not isinstance(req.get("command"), str):
                        raise ValueError("expected {\"command\": ..., \"args\": {...}}")
                    log.info("control: %s from uid %s", req["command"], _peer_uid(conn))
                    out = self.handler(req["command"], req.get("args"))
                except (ValueError, UnicodeDecodeError) as e:
                    out = {"transaction": None, "status": "error", "data": {}, "error": f"bad request: {e}"}
                conn.sendall(json.dumps(out, ensure_ascii=False, default=str).encode() + b"\n")
            except OSError as e:
                log.debug("control client went away: %s", e)


def call(state_dir: str, command: str, args: Optional[dict] = None, timeout: float = 30.0) -> dict:
    """Send one command to the daemon of ``state_dir``; ControlError when it is not running."""
    path = Path(state_dir) / SOCKET_NAME
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except FileNotFoundError:
        raise ControlError(f"the agent is not running (no {path})", "not_running") from None
    except PermissionError:
        raise ControlError(f"no permission for {path}: use sudo, or join the {CLI_GROUP} group "
                           f"(sudo usermod -aG {CLI_GROUP} $USER, then log in again)", "permission") from None
    except ConnectionRefusedError:
        raise ControlError(f"the agent is not running ({path} is left from an earlier run)", "not_running") from None
    except OSError as e:
        raise ControlError(f"cannot reach the agent at {path}: {e.strerror or e}") from None
    with s:
        s.sendall(json.dumps({"command": command, "args": args or {}}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        return json.loads(data)
    except ValueError as e:
        raise ControlError(f"unreadable answer from the agent: {e}") from None
