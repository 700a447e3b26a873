"""Write config.schema.json (the JSON Schema of the configuration file) from the settings declared
in sync_core/config/settings.py.

python scripts/config-schema.py          # rewrite config.schema.json
python scripts/config-schema.py --check  # exit 1 if it differs (tests do the same)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sync_core.config.schema import SCHEMA_FILE, schema_text  # noqa: E402


def main() -> int:
    path = ROOT / SCHEMA_FILE
    text = schema_text()
    if "--check" in sys.argv[1:]:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        return 0 if current == text else 1
    path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
