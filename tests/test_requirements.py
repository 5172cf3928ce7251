"""requirements.txt lists every third-party import of the package and scripts, each with its purpose."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, str]:
    """Distribution name (lower case) -> its comment, for every requirement line."""
    out = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            spec, _, comment = line.partition(" #")
            out[re.split(r"[<>=!~\[ ]", spec.strip())[0].lower()] = comment.strip()
    return out


def _third_party_imports(paths) -> dict[str, set[str]]:
    """Top-level module -> files importing it, outside the standard library and this project."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                local = any((d / top).is_dir() or (d / f"{top}.py").is_file()  # rpnr, bench, sibling modules
                            for d in (REPO, path.parent))
                if top not in sys.stdlib_module_names and top != "__future__" and not local:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_import_is_listed_with_a_purpose():
    requirements = _requirements()
    assert {"scipy", "faiss-cpu", "torch", "pot"} <= set(requirements)
    assert all(len(comment) > 10 for comment in requirements.values()), requirements
    sources = [*REPO.glob("rpnr/**/*.py"), *REPO.glob("*.py"), *REPO.glob("bench/*.py"), *REPO.glob("tests/*.py")]
    imports = _third_party_imports(sources)
    assert "scipy" in imports and "sklearn" in imports
    distributions = packages_distributions()
    for module, files in imports.items():
        names = {d.lower() for d in distributions.get(module, [])}
        assert names & set(requirements), f"{module} (imported by {sorted(files)}) is not in requirements.txt"


def test_faiss_is_only_for_the_official_reference_benchmark():
    imports = _third_party_imports([*REPO.glob("rpnr/**/*.py"), *REPO.glob("*.py"), *REPO.glob("bench/*.py")])
    assert imports.get("faiss") == {"bench/official_reference.py"}
    assert "bench/official_reference.py" in _requirements()["faiss-cpu"]


def test_constraints_pin_every_requirement_at_the_installed_version():
    """constraints.txt: each requirement (and the numerics behind scikit-learn) pinned at the version installed."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[name.strip().lower()] = pinned.strip()
    wanted = set(_requirements()) | {"joblib", "threadpoolctl"}
    assert wanted <= set(pins), f"not pinned in constraints.txt: {sorted(wanted - set(pins))}"
    installed = {name: version(name) for name in pins}
    assert installed == pins, "installed versions differ from constraints.txt: install with -c constraints.txt"
