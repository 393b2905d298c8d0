import json

import jsonschema
import pytest

from agent.schema import schemas
from conftest import ROOT, example_events


def test_committed_schemas_are_current():
    for name, text in schemas().items():
        committed = (ROOT / "docs" / "schema" / name).read_text(encoding="utf-8")
        assert committed == text, f"docs/schema/{name} is stale: run python -m agent.schema docs/schema"


@pytest.mark.parametrize("ev", example_events(), ids=lambda e: e["id"])
def test_examples_validate_against_the_published_schema(ev):
    schema = json.loads(schemas()["order-event.schema.json"])
    jsonschema.validate(ev, schema)
