"""Every test directory belongs to exactly one ``make test-*`` tier, so none is left out of
the tier commands (``make test`` runs them all)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIERS = ("UNIT_TESTS", "INTEGRATION_TESTS", "ACCEPTANCE_TESTS", "FAULT_TESTS")


def tier_directories() -> dict[str, list[str]]:
    makefile = (ROOT / "Makefile").read_text()
    found = {}
    for tier in TIERS:
        match = re.search(rf"^{tier} := (.+)$", makefile, re.MULTILINE)
        assert match, f"the Makefile defines no {tier}"
        found[tier] = match.group(1).split()
    return found


def test_each_test_directory_is_in_exactly_one_tier() -> None:
    listed = [d for dirs in tier_directories().values() for d in dirs]
    on_disk = sorted(f"tests/{p.parent.name}" for p in (ROOT / "tests").glob("*/test_*.py"))
    assert sorted(set(listed)) == sorted(set(on_disk))
    assert len(listed) == len(set(listed)), "a directory is in two tiers"


def test_the_unit_tier_starts_no_service() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^test-unit: (.*)$", makefile, re.MULTILINE)
    assert target is not None
    assert target.group(1).split() == ["dev-venv"]
