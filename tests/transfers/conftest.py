"""Fixtures of the transfer tests (no database)."""
from __future__ import annotations

import pytest


@pytest.fixture
def collections(settings, tmp_path):
    """Four local collections (folders) and the settings that name them."""
    roots = {name: tmp_path / name for name in ("l1", "scratch", "science", "elsewhere")}
    for root in roots.values():
        root.mkdir()
    settings.L2_COLLECTIONS = {name: str(root) for name, root in roots.items() if name != "elsewhere"}
    return roots
