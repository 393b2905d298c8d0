"""The local control socket: the CLI talks to the running daemon through it.

A Unix socket ``<state_dir>/control.sock``, mode 0660 (owner and group only), one JSON request per
line (``{"command": "...", "args": {...}}``) answered by one JSON line in the command reply shape.
Nothing listens on the network.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    pass


class ControlServer:
    def __init__(self, path: Path, handler: Callable[[str, Any], dict]) -> None:
        self.path = Path(path)
        self.handler = handler
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

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
        s.listen(4)
        s.settimeout(0.5)
        self._sock = s
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._sock:
            self._sock.close()
        if self._thread:
            self._thread.join(5)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
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
        raise ControlError(f"the agent is not running (no {path})") from None
    except PermissionError:
        raise ControlError(f"no permission for {path}: run as root or as a member of the store-agent group") from None
    except OSError as e:
        raise ControlError(f"cannot reach the agent at {path}: {e}") from None
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
