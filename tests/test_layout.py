"""The house (DESIGN.md section 15): package and scripts no longer than issue 28 found them (6,260 lines; its
5,000 are open), no module over 400 lines nor function over 60, no import circle (imports inside functions and by
name included), the method importing nothing of the engine, data or tools, the settings importing no checkpoint,
model, run-folder, evaluation or loop code, and every path of the public API importable."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE = sorted([*(REPO / "rpnr").rglob("*.py"), *REPO.glob("*.py")])
METHOD = ("rpnr.pseudo_labels", "rpnr.matching", "rpnr.memory", "rpnr.losses", "rpnr.training", "rpnr.evaluation",
          "rpnr.metrics", "rpnr.models", "rpnr.models.agw")


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports, anywhere in it (``from rpnr.x import y`` counts rpnr.x.y when that is
    a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rpnr")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rpnr"):
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            found.add("<by name>")
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p) for p in CODE if p.is_relative_to(REPO / "rpnr")}
    return {_module(p): {m for m in _imports(p) if m in modules or m == "<by name>"} for p in CODE}


def test_line_budget_and_sizes():
    total = sum(len(p.read_text().splitlines()) for p in CODE)
    assert total <= 6260, f"package + scripts hold {total} lines, more than the 6,260 issue 28 started from"
    for path in CODE:
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path.relative_to(REPO)} holds {lines} lines"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.relative_to(REPO)}:{node.name} holds {length} lines"


def test_no_import_circle():
    graph = _graph()
    assert not [m for m, deps in graph.items() if "<by name>" in deps], "a module imports by name"
    done, path = set(), []

    def visit(module: str) -> None:
        assert module not in path, f"import circle: {' -> '.join(path[path.index(module):] + [module])}"
        if module in done:
            return
        path.append(module)
        for dep in graph.get(module, ()):
            visit(dep)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_the_method_and_the_settings_import_only_what_they_may():
    graph = _graph()
    for module in METHOD:
        bad = {m for m in graph[module] if not m.startswith(("rpnr.common", *METHOD))}
        assert not bad, f"{module} imports {sorted(bad)}"
    forbidden = ("rpnr.common.checkpoints", "rpnr.models", "rpnr.engine.run_folder", "rpnr.evaluation",
                 "rpnr.engine.loop", "rpnr.engine.step", "rpnr.engine.labels", "rpnr.engine.batches",
                 "rpnr.engine.protocol", "rpnr.engine.distributed")
    assert not {m for m in graph["rpnr.engine.settings"] if m.startswith(forbidden)}


def test_every_public_path_imports():
    for path in ("rpnr.pseudo_labels:jaccard_distance", "rpnr.pseudo_labels:dbscan",
                 "rpnr.pseudo_labels:cluster_centers", "rpnr.pseudo_labels:calibrate_labels",
                 "rpnr.matching:match_clusters", "rpnr.matching:hybrid_centers",
                 "rpnr.losses:neighbor_relation_loss", "rpnr.memory:ClusterMemory", "rpnr.evaluation:eval_sysu",
                 "rpnr.evaluation:eval_regdb", "rpnr.evaluation:extract_features",
                 "rpnr.evaluation:extract_features_uint8", "rpnr.data.sysu:query_split", "rpnr.data.sysu:gallery_split",
                 "rpnr.models:build_model", "rpnr.models:convert_official_state_dict", "rpnr.models:load_weights",
                 "rpnr.training:stage2_loss", "rpnr:FeatureExtractor"):
        module, name = path.split(":")
        assert callable(getattr(importlib.import_module(module), name)), path
