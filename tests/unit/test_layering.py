"""The layering of DESIGN.md and docs/architecture.md, checked on the source (every import statement, lazy
imports inside functions included; only `if TYPE_CHECKING:` blocks are exempt):

- dependencies point one way: services -> tasks -> workers -> shared; the core (shared, workers, services)
  never imports a task: it finds tasks through the registry (`shared/tasks.py`, entry points);
- no import cycles between sparring modules;
- the objectives import only torch (and the standard library and each other; the registry is the glue);
- Ray only in the orchestration modules, Redis only in the queue/store modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("shared", "workers", "services", "tasks")

FORBIDDEN = {
    "shared": ("sparring.workers", "sparring.services", "sparring.tasks"),
    "workers": ("sparring.services", "sparring.tasks"),
    "tasks": ("sparring.services",),
    "services": ("sparring.tasks",),
}
# who may import ray / redis (paths relative to the repository root; a folder ends with "/")
RAY_MODULES = (
    "workers/controller.py", "workers/groups.py", "workers/weight_sync.py",  # orchestration, object-store transport
    "services/cli.py", "services/launch.py", "services/runs.py", "services/api/",  # starting runs, readiness
    "services/doctor.py",  # preflight: cluster resources vs a config
)  # fmt: skip
REDIS_MODULES = (
    "shared/queue.py", "shared/store.py", "shared/redis_server.py", "shared/events.py",  # streams and run store
    "services/pools.py", "services/runs.py", "services/api/",  # pool store, run service, readiness / 503s
    "services/doctor.py",  # preflight: reachability, auth and persistence settings
)  # fmt: skip


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["sparring", *parts])


def sources() -> dict[str, Path]:
    return {module_name(p): p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")}


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports(path: Path, known: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Every module `path` imports outside `if TYPE_CHECKING:`; `from a import b` names `a.b` when that is a
    module of `known`, else `a`."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            for child in getattr(node, "orelse", []):
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if sub in known else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return names


def graph() -> dict[str, set[str]]:
    mods = sources()
    known = set(mods)
    return {m: {i for i in imports(p, known) if i in known and i != m} for m, p in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return out


def test_import_direction() -> None:
    bad = []
    for folder, forbidden in FORBIDDEN.items():
        for path in (ROOT / folder).rglob("*.py"):
            bad += [f"{path.relative_to(ROOT)} imports {m}" for m in imports(path) if m.startswith(forbidden)]
    assert bad == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_cycle_detection_finds_a_planted_cycle() -> None:
    edges = graph()
    assert "sparring.shared.config" in edges["sparring.shared.prompts"]
    edges["sparring.shared.config"] = edges["sparring.shared.config"] | {"sparring.shared.prompts"}
    assert ["sparring.shared.config", "sparring.shared.prompts"] in cycles(edges)


def test_objectives_import_only_torch() -> None:
    allowed = ("torch", "sparring.workers.objectives", "__future__", "math", "typing", "dataclasses", "collections", "abc")
    bad = []
    for path in (ROOT / "workers" / "objectives").glob("*.py"):
        if path.name == "registry.py":  # the glue between config names and loss classes
            continue
        bad += [f"{path.name} imports {m}" for m in imports(path) if not m.startswith(allowed)]
    assert bad == []


def _users(top: str) -> set[str]:
    return {
        str(p.relative_to(ROOT))
        for folder in FOLDERS
        for p in (ROOT / folder).rglob("*.py")
        if any(m == top or m.startswith(top + ".") for m in imports(p))
    }


def _outside(users: set[str], allowed: tuple[str, ...]) -> list[str]:
    return sorted(u for u in users if not any(u == a or (a.endswith("/") and u.startswith(a)) for a in allowed))


def test_ray_only_in_orchestration_modules() -> None:
    assert _outside(_users("ray"), RAY_MODULES) == []


def test_redis_only_in_queue_and_store_modules() -> None:
    assert _outside(_users("redis"), REDIS_MODULES) == []


def _without_malloc_arenas(text: str) -> str:
    """`text` lower-cased without glibc's own term (a malloc arena, `MALLOC_ARENA_MAX`), which is not the task."""
    return text.lower().replace("malloc_arena", "").replace("malloc arena", "")


def test_the_core_never_names_a_task() -> None:
    """`grep -rli arena` over the core folders finds nothing: the arena lives in tasks/arena only."""
    hits = [
        str(p.relative_to(ROOT))
        for folder in ("shared", "workers", "services")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and p.suffix in (".py", ".js", ".html", ".css") and "arena" in _without_malloc_arenas(p.read_text())
    ]
    assert hits == []


def test_packages_import() -> None:
    import sparring.services.cli  # noqa: F401
    import sparring.shared.config  # noqa: F401
    import sparring.tasks.arena  # noqa: F401
    import sparring.workers.recipes.pairs  # noqa: F401


def test_test_modules_have_unique_basenames() -> None:
    """The test folders have no __init__.py, so pytest imports each test module by its basename: two files of
    one name in different folders stop the whole collection ("import file mismatch")."""
    names = sorted(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert sorted({n for n in names if names.count(n) > 1}) == []
