"""Rewrite the README's configuration tables from the settings declared in sync_core/config/settings.py.

python scripts/readme-settings.py          # rewrite README.md in place
python scripts/readme-settings.py --check  # exit 1 if README.md differs (tests do the same)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sync_core.config.settings import settings_markdown  # noqa: E402

START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def rewritten(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{settings_markdown()}\n{END}{tail}"


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = rewritten(text)
    if "--check" in sys.argv[1:]:
        return 0 if new == text else 1
    readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
