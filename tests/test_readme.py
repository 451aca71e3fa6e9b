"""Every environment variable the code reads is documented in the README's configuration table."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "l2site" / "settings.py", ROOT / "l2site" / "embedded.py", ROOT / "l2"]
PATTERN = re.compile(r"""(?:env(?:_bool|_number|_list)?|environ\.get|env\.get|env\.setdefault)\(\s*["']([A-Z][A-Z0-9_]+)["']""")


def test_every_setting_is_documented():
    names = {name for path in SOURCES for name in PATTERN.findall(path.read_text())}
    assert {"DATABASE_URL", "SECRET_KEY", "METADATA_STORE_URL"} <= names  # the pattern finds them
    readme = (ROOT / "README.md").read_text()
    undocumented = sorted(name for name in names if f"`{name}`" not in readme and name != "DJANGO_SETTINGS_MODULE")
    assert undocumented == []
