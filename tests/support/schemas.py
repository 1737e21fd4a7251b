"""Checking a real message against the JSON Schema the project ships in docs/schema/."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"


@cache
def validator(file: str) -> Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / file).read_text(encoding="utf-8"))
    return Draft202012Validator(schema)


def problems(file: str, instance: Any) -> list[str]:
    """What is wrong with ``instance`` according to ``docs/schema/<file>`` (empty: it fits)."""
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator(file).iter_errors(instance)]


def assert_conforms(file: str, instance: Any) -> None:
    found = problems(file, instance)
    assert not found, f"does not match docs/schema/{file}: {found}\n{instance!r}"
