"""`store-agent demo`: the whole product with no config and no hardware, as a user runs it."""

import subprocess
import sys
import time

from conftest import ROOT


def test_demo_runs_the_whole_story(tmp_path):
    out = tmp_path / "demo-out"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--out", str(out)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120, env={"PATH": "/usr/bin:/bin:/usr/sbin", "HOME": str(tmp_path)})
    took = time.monotonic() - t0
    print(f"demo took {took:.1f}s")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = r.stdout
    for line in ("result printed   evt-demo-0001", "result rejected", "♪ chime new_order", "♪ chime urgent",
                 "● exception LED: blink", "the clerk presses the acknowledge button", "alert acknowledged",
                 "== the paper runs out", "♪ chime device_fault", "● exception LED: on",
                 "alert raised       printer.paper_out", "alert escalated    printer.paper_out        to infodept",
                 "all queued", "result printed   evt-paper2-0001", "alert cleared      printer.paper_out",
                 "🗣 voice: 美团23号新订单", "♪ speaking", "🗣 voice: 打印机缺纸", "follow-ups due: MT-followup-",
                 "printed: 回访清单", "printed: 日报"):
        assert line in text, f"{line!r} missing from the demo's output:\n{text}"
    txt = sorted((out / "counter").glob("*.txt"))
    png = sorted((out / "counter").glob("*.png"))
    assert len(txt) == len(png) >= 10
    assert any("温馨提示" in p.read_text() for p in txt) and any("作废" in p.read_text() for p in txt)
    assert any("回访清单" in p.read_text() for p in txt) and any("日报" in p.read_text() for p in txt)
    assert str(txt[0].relative_to(tmp_path)) in text or str(txt[0]) in text
