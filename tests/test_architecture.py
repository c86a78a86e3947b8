"""The package's folders are its architecture: imports point one way, from the roles that use
the streaming runtime (operations, the harness, the command line) down to the runtime and from
the runtime down to the outputs, detection, sources and the foundation, never back up.

Read from the source (ast), so a lazy import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import streamembed

PACKAGE = Path(streamembed.__file__).parent

# Lowest first: a module may import from its own part and from any part below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("acquisition", "config", "credentials", "faults", "grid", "indices", "layout", "storage"),
    ("sources",),
    ("detection",),
    ("outputs",),
    ("runtime",),
    ("deployment",),
    ("products",),
    ("operations",),
    ("harness",),
    ("cli", "__init__"),
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str:
    """The top-level part of ``streamembed.<part>...``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every streamembed import in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "streamembed":
                # `from streamembed import x`: x is the part imported
                found += [(node.lineno, f"streamembed.{a.name}") for a in node.names]
            elif target.startswith("streamembed."):
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name) for a in node.names if a.name.startswith("streamembed.")
            ]
    return found


def test_every_part_has_a_rank() -> None:
    parts = {_part(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert parts - set(RANK) == set(), "a new part of the package needs its place in LAYERS"


def test_imports_point_down() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _part(_module_name(path))
        for line, target in _imports(path):
            if RANK[_part(target)] > RANK[source]:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert upward == [], "imports pointing up the layers:\n" + "\n".join(upward)


def test_every_subpackage_says_what_it_holds_and_may_import() -> None:
    folders = {p.parent for p in PACKAGE.rglob("*.py")} - {PACKAGE}
    assert len(folders) >= 9
    for folder in sorted(folders):
        init = folder / "__init__.py"
        assert init.exists(), f"{folder.relative_to(PACKAGE)} is a package with a docstring"
        if folder.parent != PACKAGE:
            continue  # a part's own folders (harness/bench, operations/web) are described by it
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, (
            f"{init.relative_to(PACKAGE)}: its docstring names what it may import"
        )


def test_the_runtime_never_reaches_the_roles_that_use_it() -> None:
    # the rule the layers exist for, spelled out: the runtime imports no operations, harness,
    # products, deployment or command line, whatever LAYERS says
    users = {"operations", "harness", "products", "deployment", "cli"}
    for path in (PACKAGE / "runtime").rglob("*.py"):
        for line, target in _imports(path):
            assert _part(target) not in users, f"runtime/{path.name}:{line} imports {target}"


MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 200


def test_modules_and_classes_stay_small_enough_to_read() -> None:
    # a module over MAX_MODULE_LINES says why in its docstring ("Longer than ..."); a class over
    # MAX_CLASS_LINES has no such way out: it is split along its jobs
    long_modules, long_classes = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        doc = ast.get_docstring(tree) or ""
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES and "Longer than" not in doc:
            long_modules.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    long_classes.append(f"{path.relative_to(PACKAGE)}:{node.name}: {size} lines")
    assert long_modules == [], "modules to split (or say why not):\n" + "\n".join(long_modules)
    assert long_classes == [], "classes to split along their jobs:\n" + "\n".join(long_classes)
