"""The repository stands on its own: no file reaches outside it for fixtures or tools."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {
    ".git",
    ".venv",
    ".venv-tools",
    ".venv-worker",
    ".tools",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "__pycache__",
    "results",
}
SUFFIXES = {".py", ".md", ".sh", ".toml", ".json", ".yaml", ".yml", ".txt", ".mk", ".bicep", ".example", ""}
# A directory beside the clone (the sibling "shared" one, however written) or a machine's absolute path.
OUTSIDE = re.compile(r"\.\./" + r"shared|\.parent\s*/\s*\"" + r"shared\"|/" + r"work/|parents\[[2-9]\]")


def files():
    for path in ROOT.rglob("*"):
        if any(part in SKIP_DIRS for part in path.relative_to(ROOT).parts):
            continue
        if path.is_file() and path.suffix in SUFFIXES:
            yield path


def test_no_file_reaches_outside_the_repository():
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not found, "\n".join(found)
