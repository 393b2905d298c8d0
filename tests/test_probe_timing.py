"""When the printer is probed (drivers/printers.py ``probe_transport``, agent/printing.py docstring):

* never between a job's ``printing`` mark and its bytes (``send()`` does not probe): a probe there widened
  the window in which a crash leaves a job marked but unsent (docs/RELIABILITY.md, the SIGKILL drill);
* a restart's first order waits for no probe: what an earlier run found (the journal) is used once the
  printer's ``GS I 1..3`` ids show it is the same printer (milliseconds); a printer swapped meanwhile is
  probed anew, and a remembered "confirms" never makes a clone's tickets wait (issue 17: first order);
* a printer nothing is known of (a new install) is probed before its first job is marked, so its first
  ticket is laid out and confirmed as the printer can; until then intake arms nothing for it.
"""

import threading
import time

from conftest import order, wait_until

from agent.render import Cut, Document, Text, to_escpos
from drivers.printers import make_printer
from drivers.vprinter import VirtualPrinter


class MarkWatcher:
    """Watches an agent's journal from another thread: any job in ``printing`` while its printer is not
    settled (looked at before and after the read) is recorded; a watcher that dies fails the test."""

    def __init__(self, agent, printer: str = "counter") -> None:  # noqa: ANN001
        self.agent, self.drv = agent, agent.printers[printer]
        self.marked_unsettled: list = []
        self.errors: list = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        try:
            while not self._done.is_set():
                before = self.drv.settled
                marked = [j.id for j in self.agent.journal.open_jobs() if j.state == "printing"]
                if marked and not before and not self.drv.settled:
                    self.marked_unsettled.append(marked)
                time.sleep(0.002)
        except Exception as e:  # noqa: BLE001
            self.errors.append(e)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(2)
        assert self.errors == [] and self.marked_unsettled == [], (self.errors, self.marked_unsettled[:3])


def test_send_never_probes_even_a_printer_nothing_is_known_of(vprinter):
    p = make_printer("network", "p", host="127.0.0.1", port=vprinter.port, timeout_s=1.0)
    try:
        assert p.caps is None
        p.send(to_escpos(Document("t", 48, (Text("无探测 no probe"), Cut()))))
        assert vprinter.wait_jobs(1)
        assert vprinter.ident_asked == [] and p.caps is None  # the job went out without a GS I before it
        assert p.status().printable and vprinter.ident_asked == []  # the default: nothing asked but DLE EOT
        assert p.status(maintain="first").printable and vprinter.ident_asked  # nothing known: probed
        assert p.caps["gs_r"] is True and p.fresh
    finally:
        p.close()


EPSON_IDS = {"model_id": 0x20, "type_id": 0x02, "firmware_id": 0x40}  # the virtual printer's GS I 1..3
REMEMBERED = {"reachable": True, "dle_eot": True, "gs_r": True, "cutter": True,
              "ident": {**EPSON_IDS, "maker": "EPSON", "model": "TM-T88V"}}


def test_a_remembered_printer_is_checked_by_its_ids_not_probed_again():
    with VirtualPrinter(personality="epson") as vp:
        p = make_printer("network", "p", host="127.0.0.1", port=vp.port, timeout_s=1.0)
        try:
            p.remember(REMEMBERED)
            assert p.confirm is True and not p.settled
            assert p.status().printable and vp.ident_asked == []  # "no": nothing but DLE EOT
            assert p.status(maintain="first").printable and p.settled
            assert [n for _, n in vp.ident_asked] == [1, 2, 3]  # the ids only: milliseconds, no names asked
            assert p.caps["ident"]["model"] == "TM-T88V" and p.confirm is True  # the memory holds
            assert p.status(maintain="idle").printable and len(vp.ident_asked) == 3  # settled: not asked again
        finally:
            p.close()


def test_a_printer_swapped_while_the_agent_was_down_is_probed_anew_and_not_waited_for():
    """review: a remembered ``gs_r: True`` used to survive the run's probe of a clone that never answers GS r:
    every ticket then waited for a confirmation that never came and printed twice (the second marked 补打)."""
    with VirtualPrinter(personality="clone") as vp:
        p = make_printer("network", "p", host="127.0.0.1", port=vp.port, timeout_s=0.5)
        try:
            p.remember(REMEMBERED)  # the Epson that stood there before
            assert p.status(maintain="first").printable and p.settled
            assert 65 in [n for _, n in vp.ident_asked]  # another printer (its ids differ): the whole probe
            assert p.caps["gs_r"] is None and p.hint_gs_r is None and p.confirm is False  # not waited for
            assert not p.caps["ident"].get("model")
            p.send(to_escpos(Document("t", 48, (Text("换了打印机 swapped"), Cut()))))  # no confirmation awaited
            assert vp.wait_jobs(1) and len(vp.jobs) == 1
        finally:
            p.close()


def test_nothing_is_armed_for_a_printer_while_it_is_being_probed(broker, make_agent, hq_factory, store_id):
    """review: the probe of a new install ran while intake could arm an order (its printing mark committed),
    so the order's bytes waited for the probe (a clone: about 2 s) after its mark."""

    with VirtualPrinter(personality="clone") as vp:
        hq = hq_factory(broker.port, store_id)
        a = make_agent(broker.port, vp.port, store_id)
        watcher = MarkWatcher(a)
        hq.publish(order(1, "pa"))  # arrives while the clone is probed (it answers neither GS r nor GS I 65)
        assert wait_until(lambda: len(hq.final()) == 1, 20)
        watcher.stop()
        asked = [at for at, n in vp.ident_asked if n == 65]
        assert asked and asked[0] < vp.jobs[0].at  # the probe came before the order's tickets
        assert len(vp.jobs) == 2  # once each, none marked 补打
        assert not any("补打" in j.text for j in vp.jobs)


def test_a_restart_prints_its_first_order_without_a_probe_and_a_swap_is_found(broker, make_agent, hq_factory, store_id):
    with VirtualPrinter(personality="epson") as vp, VirtualPrinter(personality="clone") as clone:
        hq = hq_factory(broker.port, store_id)
        a = make_agent(broker.port, vp.port, store_id)
        # a new install: probed at the first idle moment (or before its first job)
        hq.publish(order(1, "pt"))
        assert wait_until(lambda: len(hq.final()) == 1, 15)
        assert vp.ident_asked and vp.ident_asked[0][0] < vp.jobs[0].at
        assert a.printer_facts.view("counter")["model"] == "EPSON TM-T88V"
        assert wait_until(lambda: a.journal.printer_facts().get("counter", {}).get("caps"), 5)  # kept for a restart
        a.stop()

        vp.ident_asked.clear()
        jobs_before = len(vp.jobs)
        b = make_agent(broker.port, vp.port, store_id)
        hq.publish(order(2, "pt"))
        assert wait_until(lambda: len(hq.final()) == 2, 15)
        assert vp.wait_jobs(jobs_before + 2)
        assert [n for _, n in vp.ident_asked] == [1, 2, 3]  # the same printer: its ids checked, not probed again
        view = b.printer_facts.view("counter")
        assert view["confirm"] == "gs_r" and view["model"] == "EPSON TM-T88V" and view["columns"] == 42  # its layout
        b.stop()

        # the Epson is swapped for a clone while the agent is down (same name, the new one's address)
        c = make_agent(broker.port, clone.port, store_id)
        hq.publish(order(3, "pt"))
        assert wait_until(lambda: len(hq.final()) == 3, 20)
        assert wait_until(lambda: len(clone.jobs) == 2, 5)
        time.sleep(0.5)
        assert len(clone.jobs) == 2 and not any("补打" in j.text for j in clone.jobs)  # once each, unmarked
        statuses = [r["status"] for r in hq.results() if r["event_id"].endswith("00003")]
        assert statuses[-1] == "printed" and "failed" not in statuses, statuses
        assert c.printer_facts.view("counter")["confirm"] != "gs_r"


# ------------------------------------------------ second review: busy, partial ids, a settle that fails


def slow_ids(vp):  # the "slow" virtual printer's GS I 1..3 (the generic ids)
    return {"model_id": 0x20, "type_id": 0x02, "firmware_id": 0x40}


def test_a_busy_printer_is_not_taken_for_a_swapped_one():
    """GS I waits its turn behind a ticket still printing: silence is not 'another printer'. The memory is
    kept, nothing is probed while busy, and the printer is settled once it answers."""
    from test_review14 import busy_slow_printer  # another host's long ticket, printing for a few seconds

    with VirtualPrinter(personality="slow") as vp:
        other = busy_slow_printer(vp)
        p = make_printer("network", "p", host="127.0.0.1", port=vp.port, timeout_s=3.0)
        try:
            p.remember({**REMEMBERED, "ident": {**slow_ids(vp), "maker": "EPSON", "model": "TM-T20II"}})
            assert p.status(maintain="first").printable and not p.settled  # busy: undecided
            assert p.caps["ident"]["model"] == "TM-T20II" and p.hint_gs_r is True  # the memory is kept
            assert 65 not in [n for _, n in vp.ident_asked]  # and no whole probe of a busy printer
            assert wait_until(lambda: vp._busy_until < time.monotonic(), 15)
            assert wait_until(lambda: p.status(maintain="first") and p.settled, 10)
            assert p.caps["ident"]["model"] == "TM-T20II" and p.confirm is True
        finally:
            p.close()
            other.close()


def test_a_printer_that_answers_only_some_ids_is_checked_by_those():
    with VirtualPrinter(personality="epson") as vp:
        p = make_printer("network", "p", host="127.0.0.1", port=vp.port, timeout_s=1.0)
        try:
            ids = {k: v for k, v in EPSON_IDS.items() if k != "firmware_id"}  # it never answered GS I 3
            p.remember({**REMEMBERED, "ident": {**ids, "model": "TM-T88V"}})
            assert p.status(maintain="first").printable and p.settled
            assert [n for _, n in vp.ident_asked] == [1, 2]  # the ids it gave, in order: no false swap, no probe
        finally:
            p.close()


def test_a_job_waits_while_the_printer_cannot_be_settled(broker, make_agent, hq_factory, store_id):
    """second review: a settle that failed (busy, silent) let the job go, and the after-check then probed the
    printer with the job marked. Now no job is marked while the printer is unsettled (up to SETTLE_TRIES)."""
    from test_review14 import busy_slow_printer  # noqa: PLC0415

    with VirtualPrinter(personality="slow") as vp:
        hq = hq_factory(broker.port, store_id)
        a = make_agent(broker.port, vp.port, store_id, printers=[{"name": "counter", "connection": "network",
                       "host": "127.0.0.1", "port": vp.port, "timeout_s": 3.0}])
        hq.publish(order(1, "bs"))
        assert wait_until(lambda: len(hq.final()) == 1, 20)
        assert wait_until(lambda: a.journal.printer_facts().get("counter", {}).get("caps"), 5)
        a.stop()
        other = busy_slow_printer(vp, lines=80)  # a restart while another ticket is still printing (about 4 s)
        busy_end = time.time() + (vp._busy_until - time.monotonic())
        try:
            b = make_agent(broker.port, vp.port, store_id, printers=[{"name": "counter", "connection": "network",
                           "host": "127.0.0.1", "port": vp.port, "timeout_s": 3.0}])
            drv = b.printers["counter"]
            watcher = MarkWatcher(b)
            jobs_before = len(vp.jobs)
            hq.publish(order(2, "bs"))
            assert wait_until(lambda: len(hq.final()) == 2, 40)
            watcher.stop()
            assert drv.fresh and drv._settle_misses == 0  # settled by its answer, not by giving up
            mine = [j for j in vp.jobs[jobs_before:] if "bs00002" in j.text]
            assert len(mine) == 2 and not any("补打" in j.text for j in vp.jobs[jobs_before:])
            assert mine[0].at >= busy_end - 0.05  # nothing of it went before the printer could answer
        finally:
            other.close()
