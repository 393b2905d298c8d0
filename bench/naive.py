"""The naive baseline for bench/suite.py: MQTT straight to the printer, nothing else.

    .venv/bin/python bench/naive.py --broker-port 1883 --store naive-0001 --printer-port 9100

paho-mqtt (CallbackAPIVersion.VERSION2) subscribes QoS 1 to ``<prefix>/<store>/orders``; a plain
``on_message`` parses the JSON and prints a few lines through python-escpos
``escpos.printer.Network`` (one connection, opened on the first message and kept), then ``cut()``.
paho acknowledges each message when ``on_message`` returns. No journal, no status queries, no
print confirmation, no results. Once subscribed (SUBACK) it publishes a retained ``online`` on
``<prefix>/<store>/status`` so the suite knows it is ready. SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import uuid

import paho.mqtt.client as paho
from escpos.printer import Network
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker-host", default="127.0.0.1")
    ap.add_argument("--broker-port", type=int, required=True)
    ap.add_argument("--prefix", default="stores")
    ap.add_argument("--store", required=True)
    ap.add_argument("--printer-host", default="127.0.0.1")
    ap.add_argument("--printer-port", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=5.0, help="printer socket timeout (s)")
    a = ap.parse_args()

    printer = Network(a.printer_host, a.printer_port, timeout=a.timeout)
    orders_topic = f"{a.prefix}/{a.store}/orders"
    status_topic = f"{a.prefix}/{a.store}/status"

    def on_connect(c, userdata, flags, reason_code, properties):
        c.subscribe(orders_topic, qos=1)

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        c.publish(status_topic, b"online", qos=1, retain=True)

    def on_message(c, userdata, m):
        try:
            o = json.loads(m.payload)["order"]
            printer.text(f"订单号:{o['id']}\n")
            printer.text(f"#{o.get('seq')} {o.get('platform')}\n")
            for it in o.get("items", []):
                printer.text(f"{it['name']} {it.get('spec', '')} x{it['qty']}\n")
            printer.text(f"实付: {o['amounts']['paid'] / 100:.2f}\n")
            printer.cut()
        except Exception as e:  # noqa: BLE001 - naive: report and carry on
            print(f"naive: {m.topic}: {e!r}", file=sys.stderr, flush=True)

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"naive-{uuid.uuid4().hex[:8]}")
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message

    def stop(signum, frame):
        client.disconnect()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    client.connect(a.broker_host, a.broker_port)
    client.loop_forever()
    try:
        printer.close()
    except Exception:  # noqa: BLE001
        pass


if __name__ == "__main__":
    main()
