"""Dependencies point one way: services -> workers -> shared (DESIGN.md)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "shared": ("sparring.workers", "sparring.services"),
    "workers": ("sparring.services",),
}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_import_direction() -> None:
    bad = []
    for folder, forbidden in FORBIDDEN.items():
        for path in (ROOT / folder).rglob("*.py"):
            bad += [f"{path.relative_to(ROOT)} imports {m}" for m in imports(path) if m.startswith(forbidden)]
    assert bad == []


def test_packages_import() -> None:
    import sparring.services.cli  # noqa: F401
    import sparring.shared.config  # noqa: F401
    import sparring.workers.recipes.pairs  # noqa: F401
