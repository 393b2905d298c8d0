"""python-escpos' printer database (escpos-printer-db), read so that no crash or full card can brick us.

``escpos.capabilities`` runs at import. It reads ``$ESCPOS_CAPABILITIES_PICKLE_DIR/<python>.capabilities.pickle``
when that is newer than the bundled ``capabilities.json``; otherwise it parses the JSON and writes the pickle
*in place*. A power cut during that write leaves a 0-byte pickle, and from then on every import dies with
``EOFError``; a full SD card makes the write, and so the import, fail. So, before the first import:

* ``prepare_pickle_dir()`` checks the pickle there and, when it is missing, damaged or stale, writes a new
  one itself: a temporary file, fsync, rename (a crash leaves the old file or the new one, never half).
* When the cache directory cannot be written (full card, read-only home), the pickle goes to a private
  directory in RAM (``/dev/shm/store-agent-escpos-<uid>``, reused by later processes) or the temp dir
  instead; only when none can be written does the import fail, with a ``CapabilitiesError`` that names them.
* The pickle's mtime is never older than the JSON's, even with a clock behind the package's files.

``profiles()`` reads the same JSON directly (it is JSON: no pickle, no YAML) for the agent's own use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import platform
import stat
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional


class CapabilitiesError(Exception):
    """python-escpos' capability data cannot be made loadable."""


def json_path() -> Path:
    """The ``capabilities.json`` python-escpos ships (found without importing the package)."""
    spec = importlib.util.find_spec("escpos")
    if spec is None or not spec.submodule_search_locations:
        raise CapabilitiesError("python-escpos is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "capabilities.json"


@lru_cache(maxsize=1)
def database() -> dict[str, Any]:
    """The whole capability database: ``{"profiles": {...}, "encodings": {...}}``."""
    path = json_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CapabilitiesError(f"{path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise CapabilitiesError(f"{path}: no 'profiles' table")
    return data


def profiles() -> dict[str, dict[str, Any]]:
    return database()["profiles"]


def pickle_name() -> str:
    return f"{platform.python_version()}.capabilities.pickle"


def _good(path: Path, source: Path) -> bool:
    """The pickle at ``path`` is whole and newer than the JSON (so escpos will load it, and can)."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0) or st.st_mtime < source.stat().st_mtime:
            return False
        with open(path, "rb") as f:
            data = pickle.load(f)  # our own file, in our own directory (checked above)
    except Exception:  # noqa: BLE001 - EOFError, UnpicklingError, OSError...: damaged
        return False
    return isinstance(data, dict) and isinstance(data.get("profiles"), dict)


def _write(path: Path, source: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".capabilities-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(database(), f, protocol=2)
            f.flush()
            os.fsync(f.fileno())
        # never older than the JSON (escpos would call it stale), also when this clock is behind the package's
        # (a Raspberry Pi without a real-time clock before NTP has set it)
        stamp = max(time.time(), source.stat().st_mtime + 1)
        os.utime(tmp, (stamp, stamp))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _try_dir(d: Path, source: Path) -> Optional[str]:
    """None when ``d`` now holds a good pickle, else why not."""
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = d / pickle_name()
        if _good(path, source):
            return None
        _write(path, source)
        return None if _good(path, source) else f"{path}: written but does not load back"
    except OSError as e:
        return f"{d}: {e.strerror or e}"


def _private_dir(base: Path) -> Optional[Path]:
    """``base/store-agent-escpos-<uid>``: made 0700 if missing; used only when it is ours and nobody else's."""
    d = base / f"store-agent-escpos-{os.geteuid()}"
    try:
        d.mkdir(mode=0o700, exist_ok=True)
        st = d.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return None  # someone else's, or a link, or open to others: not for a pickle we will load
    return d


def prepare_pickle_dir(preferred: Optional[str] = None) -> str:
    """A directory holding a whole, fresh capabilities pickle for escpos to load; the preferred one when
    it can be written, else a private one in RAM or the temp dir."""
    source = json_path()
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "store-agent-escpos")
    candidates = [preferred or default]
    problems: list[str] = []
    for d in candidates:
        why = _try_dir(Path(d), source)
        if why is None:
            return d
        problems.append(why)
    for base in ("/dev/shm", tempfile.gettempdir()):
        d = _private_dir(Path(base))  # one per user, reused by every later process (never one per start)
        if d is None:
            problems.append(f"{base}: no private directory can be made there")
            continue
        why = _try_dir(d, source)
        if why is None:
            return str(d)
        problems.append(why)
    raise CapabilitiesError("cannot write python-escpos' capability cache anywhere: " + "; ".join(problems))
