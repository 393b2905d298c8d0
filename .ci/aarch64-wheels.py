"""CI (issue 17): the package installs on 64-bit Raspberry Pi OS (bookworm: aarch64, glibc 2.36, CPython 3.11).

    python .ci/aarch64-wheels.py          (from the checkout; needs the package registry, ~10-30 s)

1. Resolves the project's runtime dependencies, pinned and transitive, as pip would here
   (``pip install --dry-run --ignore-installed --report``).
2. For each, asks the registry for a wheel that installs on the Pi:
   ``pip download --no-deps --only-binary=:all: --platform manylinux_2_{17..36}_aarch64 / manylinux2014_aarch64
   --python-version 3.11 --implementation cp --abi cp311`` (pure-Python ``py3-none-any`` wheels count).
3. The packages without such a wheel must be in FROM_SOURCE below, which names what building them
   needs; install.sh must install those Debian packages on the device (DEVICE_PACKAGES).

Exit 1, naming the package, when a dependency has no aarch64 wheel and is not in FROM_SOURCE, when a
package of FROM_SOURCE now has a wheel (the list is stale), or when install.sh lacks a build need.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = "3.11"
PLATFORMS = ["manylinux2014_aarch64"] + [f"manylinux_2_{v}_aarch64" for v in (17, 24, 26, 27, 28, 31, 34, 35, 36)]

# Built from their sdist on the Pi (no aarch64 wheel on the registry): what the build needs there.
FROM_SOURCE = {
    "sdnotify": [],  # pure Python, sdist only: nothing to compile
    "simpleaudio": ["gcc", "python3-dev", "libasound2-dev"],  # a C extension against ALSA
}


def resolve(tmp: Path) -> dict[str, str]:
    report = tmp / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--report", str(report), str(ROOT)], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"aarch64: cannot resolve the dependencies here:\n{r.stderr}")
    got = {}
    for item in json.loads(report.read_text())["install"]:
        meta = item["metadata"]
        name = re.sub(r"[-_.]+", "-", meta["name"]).lower()
        if name != "store-agent":
            got[name] = meta["version"]
    return got


def has_wheel(name: str, version: str, tmp: Path) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--dest", str(tmp / name), "--python-version", PY, "--implementation", "cp", "--abi", "cp311",
           "--abi", "abi3", "--abi", "none"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    r = subprocess.run(cmd + [f"{name}=={version}"], capture_output=True, text=True)
    files = [f.name for f in (tmp / name).glob("*.whl")] if r.returncode == 0 else []
    return r.returncode == 0, (files[0] if files else r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "?")


def device_packages() -> set[str]:
    text = (ROOT / "install.sh").read_text()
    m = re.search(r"^DEVICE_PACKAGES=\(([^)]*)\)", text, re.M)
    return set(m.group(1).split()) if m else set()


def main() -> int:
    problems = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        deps = resolve(tmp)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = dict(zip(deps, pool.map(lambda kv: has_wheel(kv[0], kv[1], tmp), deps.items())))
    device = device_packages()
    for name, (ok, what) in sorted(results.items()):
        if ok:
            print(f"aarch64 wheel  {name}=={deps[name]}: {what}")
            if name in FROM_SOURCE:
                problems.append(f"{name} now has an aarch64 wheel: take it out of FROM_SOURCE")
        elif name in FROM_SOURCE:
            needs = FROM_SOURCE[name]
            print(f"from source    {name}=={deps[name]}: needs {', '.join(needs) or 'nothing (pure Python)'}")
            missing = [p for p in needs if p not in device]
            if missing:
                problems.append(f"{name} builds from source on the device but install.sh DEVICE_PACKAGES lacks {', '.join(missing)}")
        else:
            problems.append(f"{name}=={deps[name]}: no wheel for aarch64/CPython {PY} ({what})")
    for p in problems:
        print(f"aarch64: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
