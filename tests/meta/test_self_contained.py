"""The repository stands on its own: no file reaches outside it for fixtures or tools.

Checked by what a reference says, not by what this machine happens to hold beside the checkout
(a clean clone has nothing there, and would check nothing). A relative reference (``../x``) must
name something that exists inside the repository, read from its file's directory (how Markdown
links resolve); read from the root, where commands and tests run, ``../`` always leaves. A line
whose ``../`` is data, such as hostile input in a test, says so with ``# not a path``. An absolute
path into a place where a machine keeps its own files (the directory holding the checkout, the
temporary directory, home directories, ``/work`` ...) is a way out, unless it follows an option
that names where a command writes (``--out /tmp/bench``): created there, not read from there.
So is climbing out of the repository from ``__file__`` (``parents[2]`` and up) or ``ROOT.parent``.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from tests.harness.paths import ROOT

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
RELATIVE = re.compile(r"(?<![\w./:@-])((?:\.\./)+[\w.-]+(?:/[\w.-]+)*)")  # ../x, ../../x/y (not a/../x)
CLIMB = re.compile(r"parents\[[2-9]\]|\bROOT\.parent\b")  # Path(__file__).parents[2]: above the repository
NOT_A_PATH = "# not a path"
#: where a machine keeps its own files, besides the directory holding the checkout
MACHINE_DIRS = ("/tmp", "/var/tmp", "/home", "/root", "/Users", "/mnt", "/srv", "/work")
WRITES_TO = re.compile(r"(?:--out|--output|--location|-o)[ =]$")  # bench --out DIR, azurite --location DIR


def ways_out(line: str, directory: Path, root: Path) -> list[str]:
    """What in ``line`` (of a file in ``directory``) reaches outside ``root``."""
    found = [m.group() for m in CLIMB.finditer(line)]
    if NOT_A_PATH not in line:
        for reference in RELATIVE.findall(line):
            target = (directory / reference).resolve()
            if not (target.is_relative_to(root) and target.exists()):
                found.append(reference)
    places = {*MACHINE_DIRS, str(Path(tempfile.gettempdir()).resolve()), str(root.parent)} - {root.anchor}
    alternatives = "|".join(re.escape(p) for p in sorted(places, key=len, reverse=True))
    for match in re.finditer(rf"(?<![\w.:/-])(?:{alternatives})(?:/[\w.-]+)+", line):
        if not WRITES_TO.search(line[: match.start()]):
            found.append(match.group())
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
        ('EVENTS = ROOT.parent / "elsewhere" / "events"', root / "tests"),
        # ways out to nothing on this machine: on a clean clone, there is nothing beside either
        ('"../../nothing-there"', root / "tests"),
        ("../elsewhere-else/x", root),
        ('open("../fixtures/event.json")', root / "tests"),  # read from the root, where tests run
        ("see [the guide](../guide.md)", root / "docs"),  # no docs/../guide.md
        ("cd /work/elsewhere && make", root),
        ('EVENTS = Path("/tmp/fixtures/events")', root / "tests"),
        ("python -m bench.run --out /tmp/bench && cat /tmp/bench/summary.json", root),
        ("see /home/someone/notes.md", root),
    ):
        assert ways_out(line, directory, root), line
    for line, directory in (
        ("see [the README](../README.md)", root / "docs"),  # inside, from the file's directory
        ('"giantswarm/../etc"', root / "tests"),
        ('"sha256:../../etc/passwd"', root / "tests"),  # hostile input, inside a digest
        ('("tag", "../../x"),  # not a path: hostile input', root / "tests"),
        ("HERE = Path(__file__).resolve().parents[1]", root / "tests"),
        ("python -m bench.run --out /tmp/bench", root),  # created by the command
        ("azurite --silent --location /tmp/azurite", root),
        ('REGISTRY = "/usr/bin/docker-registry"', root / "tests"),
        ('f"{registry}/v2/_catalog"', root / "tests"),
        ('"http://127.0.0.1:5000/tmp/x"', root / "tests"),
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
