"""The core never imports a concrete provider or platform (STYLE.md guideline 1)."""

import ast
from pathlib import Path

CORE = Path(__file__).parents[2] / "proxy"


def test_core_imports_no_adapter():
    offenders = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("providers", "platforms")]
    assert offenders == []


def test_core_does_not_import_litellm():
    hits = [p.name for p in CORE.rglob("*.py") if "import litellm" in p.read_text()]
    assert hits == []
