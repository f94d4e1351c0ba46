"""The house's arrows run one way: a folder imports only from folders below it in LAYERS.

Checked on the source (every import statement, at module level or inside a function), so an import
that runs back up fails here even when no test happens to execute it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pocketlm"
# lowest first; a folder may import from any folder before it. Top-level helper modules (utils, lazy,
# cli_support) import nothing of pocketlm's capabilities, and cli.py / demo.py sit above everything.
LAYERS = ["utils", "lazy", "cli_support", "htmlreport", "model", "interop", "export", "survey", "data", "train", "runtime",
          "evaluate", "profile", "compress", "fit", "insights", "demo", "cli"]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("pocketlm.") and n.count(".") >= 1}
    return found


def test_every_folder_imports_only_from_folders_below_it() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).parts
        area = rel[0] if len(rel) > 1 else path.stem
        if area == "__init__":
            continue
        assert area in LAYERS, f"{area} is not placed in LAYERS: add it where its imports allow"
        for target in _imports(path) - {area}:
            if target in LAYERS and LAYERS.index(target) > LAYERS.index(area):
                wrong.append(f"{path.relative_to(PACKAGE)} imports pocketlm.{target}")
    assert not wrong, "imports that run back up:\n" + "\n".join(wrong)
