"""Docs that resolve: every "docs/contract.md §N" names a numbered section of docs/contract.md,
and every file a doc, docstring or comment points to exists in the repository.

A reader who follows a reference must land somewhere: a section number that docs/contract.md
does not have, or a file that lives only outside the repository, is a dead end.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXT_SUFFIXES = {".py", ".md", ".js", ".html", ".css", ".yaml", ".yml", ".toml", ".cfg", ".ini",
                 ""}


SKIP_DIRS = {".git", ".venv", "node_modules", "test-artifacts", "run", "build"}


def tracked_text_files() -> list[Path]:
    """The repository's text files (git's list; a walk of the tree outside a git checkout)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout
        paths = [ROOT / line for line in listed.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in ROOT.rglob("*")
                 if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)]
    return [p for p in paths if p.is_file() and p.suffix in TEXT_SUFFIXES
            and "node_modules" not in p.parts and not p.name.endswith(".egg-info")]


def contract_sections() -> set[str]:
    text = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    return set(re.findall(r"^## (\d+)\. ", text, flags=re.MULTILINE))


def test_docs_contract_has_the_contracts_ten_numbered_sections() -> None:
    assert contract_sections() == {str(n) for n in range(1, 11)}


def test_every_contract_section_cited_exists() -> None:
    sections = contract_sections()
    dead = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        # "docs/contract.md §1, §3" and "docs/contract.md §1-§4" cite every number listed
        for match in re.finditer(r"contract\.md((?:[ ,]*(?:and )?§\d+(?:[-–]§\d+)?)+)", text):
            for number in re.findall(r"§(\d+)", match.group(1)):
                if number not in sections:
                    dead.append(f"{path.relative_to(ROOT)}: §{number}")
    assert not dead, f"docs/contract.md has no such section: {dead}"


def test_every_markdown_file_named_exists() -> None:
    known = {p.relative_to(ROOT).as_posix() for p in tracked_text_files()}
    names = {Path(k).name for k in known}
    dead = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for ref in set(re.findall(r"(?<![\w/.-])((?:\.\./)*[\w./-]*[A-Za-z0-9_-]+\.md)\b", text)):
            relative = (path.parent / ref).resolve()
            if ref in known or ref.lstrip("./") in known or relative.is_file():
                continue
            if "/" not in ref and ref in names:  # "gateway.md" next to it, or in docs/
                continue
            dead.append(f"{path.relative_to(ROOT)}: {ref}")
    assert not dead, f"references to files the repository does not have: {sorted(dead)}"
