"""The imports stay one-way: no app's code imports another app's views (guide: "Keep the imports one-way").

Helpers that several apps' views share live in ``l2site.viewhelpers``; reads about scans that the
overview shows live in ``scanning.selectors``. Every import statement, at module level or inside a
function, of every module of the three apps and the site package is checked.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPS = ("inversions", "scanning", "publishing", "l2site")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def _modules():
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" not in path.parts:
                yield app, path


@pytest.mark.parametrize("app,path", list(_modules()), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_no_module_imports_another_apps_views(app, path):
    others = [f"{other}.views" for other in APPS if other != app]
    wrong = sorted(name for name in _imports(path) if any(name == o or name.startswith(o + ".") for o in others))
    assert not wrong, f"{path.relative_to(ROOT)} imports another app's views: {wrong}"


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def overview(request):\n    from scanning.views import last_scan\n")
    assert "scanning.views.last_scan" in _imports(sample)
