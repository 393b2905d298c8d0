"""The journal's writer thread on its own: batching, a full card, lazy writes, outside-transaction work."""

import time

from agent.journal import Journal
from conftest import set_max_pages


def test_lazy_writes_failing_on_a_full_card_never_hold_back_other_work_nor_spin(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    try:
        j.record_event("e1", "o1", "order.created", b"{}", [("receipt", "P")])
        job = j.begin_attempt(j.next_job("P").id)
        set_max_pages(j)
        big = b"x" * 300_000
        j.submit(lambda db: db.execute("INSERT INTO alerts VALUES ('a', 1, 0, ?)", (big,)) and None, lazy=True)
        j.finish_job(job.id, "printed")
        try:
            j.flush()  # the lazy writes fail: the card is full
        except Exception:  # noqa: BLE001
            pass
        batches = []
        orig = j._writer._run_batch
        j._writer._run_batch = lambda b: (batches.append(len(b)), orig(b))[1]
        t0 = time.monotonic()
        assert set_max_pages(j, 1 << 30) > 0  # work outside any transaction is not stuck behind them
        time.sleep(0.5)
        assert time.monotonic() - t0 < 2 and len(batches) <= 2, batches  # no busy loop of failing batches
        j.flush()
        assert j.event_status("e1") == "printed"  # space again: the outcome was kept and is stored now
    finally:
        j.close()
