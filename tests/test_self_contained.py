"""The repository stands on its own: no file reaches outside it for fixtures or tools.

What lies beside the checkout is read from the disk, not written here: every directory next to
the repository, and the absolute path of the directory holding it. A file that names one of
them (``../<sibling>``, ``.parent / "<sibling>"``, ``<parent path>/...``) or climbs out of the
repository from ``__file__`` (``parents[2]`` and up) would not work in a clone on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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
CLIMB = r"parents\[[2-9]\]"  # Path(__file__).parents[2]: above the repository


def outside(siblings: Iterable[str], parent: Path | None) -> re.Pattern[str]:
    """What names a place outside the repository: a sibling directory, or the parent's path."""
    ways = [CLIMB]
    for name in sorted(siblings):
        quoted = re.escape(name)
        ways += [rf"\.\./{quoted}(?![\w.-])", rf"\.parent\s*/\s*[\"']{quoted}[\"']"]
    if parent is not None and parent != Path(parent.anchor):  # a checkout at / has no outside path
        ways.append(re.escape(f"{parent}/"))
    return re.compile("|".join(ways))


def files():
    for path in ROOT.rglob("*"):
        if any(part in SKIP_DIRS for part in path.relative_to(ROOT).parts):
            continue
        if path.is_file() and path.suffix in SUFFIXES and path != Path(__file__).resolve():
            yield path  # not this file: its examples of ways out are checked by the first test


def test_the_pattern_finds_each_way_out_and_nothing_inside():
    pattern = outside({"elsewhere", ".hidden"}, Path("/srv/checkouts"))
    for line in (
        'FIXTURES = ROOT / "../elsewhere/events"',
        "see ../.hidden/README.md",
        'DATA = ROOT.parent / "elsewhere"',
        "cd /srv/checkouts/elsewhere && make",
        "HERE = Path(__file__).resolve().parents[2]",
    ):
        assert pattern.search(line), line
    for line in (
        "see [the README](../README.md)",
        '"giantswarm/../etc"',
        "../elsewhere-else/x",
        "HERE = Path(__file__).resolve().parents[1]",
        "/srv/checkoutsX/",
    ):
        assert not pattern.search(line), line


def test_no_file_reaches_outside_the_repository():
    siblings = {p.name for p in ROOT.parent.iterdir() if p.is_dir() and p != ROOT}
    pattern = outside(siblings, ROOT.parent)
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)
