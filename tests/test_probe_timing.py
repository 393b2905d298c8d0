"""When the printer is probed (drivers/printers.py ``probe_transport``, agent/printing.py docstring):

* never between a job's ``printing`` mark and its bytes (``send()`` does not probe): a probe there widened
  the window in which a crash leaves a job marked but unsent (docs/RELIABILITY.md, the SIGKILL drill);
* a restart's first order waits for no probe: what an earlier run found (the journal) is used until the
  worker is idle, and the run's own probe comes then (issue 17: first order after start);
* a printer nothing is known of (a new install) is probed before its first job is marked, so its first
  ticket is laid out and confirmed as the printer can.
"""

import time

from conftest import order, wait_until

from agent.render import Cut, Document, Text, to_escpos
from drivers.printers import make_printer
from drivers.vprinter import VirtualPrinter


def test_send_never_probes_even_a_printer_nothing_is_known_of(vprinter):
    p = make_printer("network", "p", host="127.0.0.1", port=vprinter.port, timeout_s=1.0)
    try:
        assert p.caps is None
        p.send(to_escpos(Document("t", 48, (Text("无探测 no probe"), Cut()))))
        assert vprinter.wait_jobs(1)
        assert vprinter.ident_asked == [] and p.caps is None  # the job went out without a GS I before it
        assert p.status(maintain="no").printable and vprinter.ident_asked == []  # "no": nothing asked but DLE EOT
        assert p.status(maintain="first").printable and vprinter.ident_asked  # nothing known: probed
        assert p.caps["gs_r"] is True and p.fresh
    finally:
        p.close()


def test_a_remembered_printer_is_not_probed_before_a_job_but_when_idle():
    with VirtualPrinter(personality="epson") as vp:
        p = make_printer("network", "p", host="127.0.0.1", port=vp.port, timeout_s=1.0)
        try:
            p.remember({"reachable": True, "dle_eot": True, "gs_r": True, "cutter": True, "ident": {"model": "TM-T88V"}})
            assert p.confirm is True and not p.fresh
            assert p.status(maintain="first").printable and vp.ident_asked == []  # known: no probe before a job
            assert p.status(maintain="idle").printable and vp.ident_asked and p.fresh  # idle: this run's own probe
            n = len(vp.ident_asked)
            assert p.status(maintain="idle").printable and len(vp.ident_asked) == n  # once per run
        finally:
            p.close()


def test_a_restart_prints_its_first_order_before_probing_and_probes_when_idle(broker, make_agent, hq_factory, store_id):
    with VirtualPrinter(personality="epson") as vp:
        hq = hq_factory(broker.port, store_id)
        over = {"health": {"printer_poll_s": 3}}
        a = make_agent(broker.port, vp.port, store_id, **over)
        # a new install: probed before its first job (here at the first idle moment, right after the start)
        hq.publish(order(1, "pt"))
        assert wait_until(lambda: len(hq.final()) == 1, 15)
        first_job_at = vp.jobs[0].at
        assert vp.ident_asked and vp.ident_asked[0][0] < first_job_at, (vp.ident_asked[:1], first_job_at)
        assert a.printer_facts.view("counter")["model"] == "EPSON TM-T88V"
        assert wait_until(lambda: a.journal.printer_facts().get("counter", {}).get("caps"), 5)  # kept for a restart
        a.stop()

        vp.ident_asked.clear()
        jobs_before = len(vp.jobs)
        b = make_agent(broker.port, vp.port, store_id, **over)
        started = time.time()
        hq.publish(order(2, "pt"))
        assert wait_until(lambda: len(hq.final()) == 2, 15)
        assert vp.wait_jobs(jobs_before + 2)
        assert vp.ident_asked == [], vp.ident_asked  # printed on what the journal kept: no probe before it
        view = b.printer_facts.view("counter")
        assert view["confirm"] == "gs_r" and view["model"] == "EPSON TM-T88V" and view["columns"] == 42  # its layout
        assert all(j.job.cut for j in vp.jobs[jobs_before:])
        # idle for printer_poll_s: this run's own probe (a printer swapped while the agent was down is seen)
        assert wait_until(lambda: vp.ident_asked, 10)
        assert vp.ident_asked[0][0] - started >= 2.0, vp.ident_asked[0][0] - started
        assert wait_until(lambda: b.printers["counter"].fresh, 5)
