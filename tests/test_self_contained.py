"""The repository stands on its own: no file reaches outside it for fixtures or tools.

What lies outside is found on the disk, not named here. A relative reference (``../x``), taken
from the repository root (where commands and tests run) or from the file's own directory (how
Markdown links resolve), that leaves the repository and names something that exists there is a
way out; so is an absolute path into the directory holding the checkout (unless that is the
system's temporary directory, whose other entries have nothing to do with us), and climbing out
of the repository from ``__file__`` (``parents[2]`` and up). Where nothing exists beside a clone,
a file reading from there would fail its own tests anyway.
"""

from __future__ import annotations

import re
import tempfile
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
RELATIVE = re.compile(r"(?<![\w./:@-])((?:\.\./)+[\w.-]+)")  # ../x, ../../x (not a/../x)
CLIMB = re.compile(r"parents\[[2-9]\]")  # Path(__file__).parents[2]: above the repository


def ways_out(line: str, directory: Path, root: Path) -> list[str]:
    """What in ``line`` (of a file in ``directory``) reaches outside ``root``."""
    found = [m.group() for m in CLIMB.finditer(line)]
    for reference in RELATIVE.findall(line):
        for base in (root, directory):
            target = (base / reference).resolve()
            if not target.is_relative_to(root) and target.exists():
                found.append(reference)
                break
    holder = root.parent
    if holder != Path(holder.anchor) and holder != Path(tempfile.gettempdir()).resolve():
        found += re.findall(re.escape(f"{holder}/") + r"[\w.-]*", line)
    return found


def files():
    for path in ROOT.rglob("*"):
        if any(part in SKIP_DIRS for part in path.relative_to(ROOT).parts):
            continue
        if path.is_file() and path.suffix in SUFFIXES and path != Path(__file__).resolve():
            yield path  # not this file: its examples of ways out are checked by the first test


def test_each_way_out_is_found_and_nothing_inside(tmp_path):
    holder = tmp_path / "workspace"
    root, beside = holder / "repo", holder / "elsewhere"
    (root / "docs").mkdir(parents=True)
    (beside / "events").mkdir(parents=True)
    (holder / ".hidden").mkdir()
    (root / "README.md").write_text("")
    (tmp_path / "etc").mkdir()
    for line, directory in (
        ('FIXTURES = ROOT / "../elsewhere/events"', root / "tests"),
        ("see ../.hidden/README.md", root),
        ("[events](../../elsewhere/events)", root / "docs"),
        (f"cd {holder}/elsewhere && make", root),
        ("HERE = Path(__file__).resolve().parents[2]", root / "tests"),
    ):
        assert ways_out(line, directory, root), line
    for line, directory in (
        ("see [the README](../README.md)", root / "docs"),  # inside, from the file's directory
        ('"giantswarm/../etc"', root / "tests"),
        ('"../../nothing-there"', root / "tests"),  # hostile input in a test, not a path we read
        ('"sha256:../../etc/passwd"', root / "tests"),  # the same, inside a digest
        ("../elsewhere-else/x", root),
        ("HERE = Path(__file__).resolve().parents[1]", root / "tests"),
        (f"{holder}X/", root),
    ):
        assert not ways_out(line, directory, root), line


def test_no_file_reaches_outside_the_repository():
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if ways_out(line, path.parent, ROOT)
    ]
    assert not found, "\n".join(found)
