"""Where the tests find the repository and its fixtures (tests live one or two levels below the root)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
EVENTS = ROOT / "tests" / "fixtures" / "events"  # Event Grid deliveries as ACR sends them
SHAPES = ROOT / "tests" / "fixtures" / "shapes"  # real-content shapes (scripts/make-shape-fixtures.py)
