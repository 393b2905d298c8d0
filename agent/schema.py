"""JSON Schemas of the MQTT payloads and the config file, generated from the pydantic models.

``python -m agent.schema docs/schema`` rewrites the committed copies (a test keeps them current).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .config import Config
from .messages import Health, OrderEvent, OrderResult, Report
from .remote import ConfigSet, ConfigState

MODELS = {
    "order-event.schema.json": (OrderEvent, "validation", "Order event (in, P/S/orders)"),
    "order-result.schema.json": (OrderResult, "serialization", "Order result (out, P/S/orders/result)"),
    "config.schema.json": (Config, "validation", "store-agent config file (TOML)"),
    "health.schema.json": (Health, "serialization", "Health snapshot (out, retained, P/S/health)"),
    "stats.schema.json": (Report, "serialization", "The store's figures (out, retained, P/S/stats; the report request)"),
    "config-set.schema.json": (ConfigSet, "validation", "Remote config overlay (in, P/S/config/set)"),
    "config-state.schema.json": (ConfigState, "serialization", "Applied remote config (out, retained, P/S/config/state)"),
}


def schemas() -> dict[str, str]:
    out = {}
    for name, (model, mode, title) in MODELS.items():
        schema = model.model_json_schema(mode=mode)
        schema["title"] = title
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out[name] = json.dumps(schema, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else "docs/schema")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in schemas().items():
        (target / name).write_text(text, encoding="utf-8")
        print(target / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
