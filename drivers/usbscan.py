"""List USB printer-class devices (interface class 7) with pyusb, for ``store-agent printers``."""

from __future__ import annotations

import os
from typing import Any


class UsbScanError(Exception):
    pass


def _is_printer(dev: Any) -> bool:
    try:
        for cfg in dev:
            for intf in cfg:
                if intf.bInterfaceClass == 7:
                    return True
    except Exception:  # noqa: BLE001 - descriptors we may not read
        return False
    return dev.idVendor in (0x04B8, 0x0416, 0x0483, 0x1FC9, 0x0471)


def scan() -> list[dict]:
    try:
        import usb.core  # noqa: PLC0415
    except ImportError as e:
        raise UsbScanError(f"pyusb is not installed: {e}") from e
    try:
        devices = list(usb.core.find(find_all=True))
    except usb.core.NoBackendError as e:
        raise UsbScanError("no libusb backend: apt-get install libusb-1.0-0") from e
    out = []
    for dev in devices:
        if not _is_printer(dev):
            continue
        node = f"/dev/bus/usb/{dev.bus:03d}/{dev.address:03d}"
        try:
            product = usb.util.get_string(dev, dev.iProduct) if dev.iProduct else None
        except Exception:  # noqa: BLE001 - needs permission on some systems
            product = None
        out.append({"vendor_id": dev.idVendor, "product_id": dev.idProduct, "bus": dev.bus, "address": dev.address,
                    "product": product, "node": node, "writable": os.access(node, os.R_OK | os.W_OK)})
    return out
