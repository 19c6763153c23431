"""The module layering of docs/architecture.md: every import points down (or within a layer),
and no import circles.

Both read the import statements (``ast``), not what an interpreter happens to execute: an import
inside a function counts like one at the top. The lazy ones are what a cycle hides behind (the
datasets and the scenario once imported each other, one of them inside a function), and an
import-time check (``importlib``, ``sys.modules``) would never see them. What the statements
cannot show: a module name computed at run time (``plugins/__init__.py`` imports its modules
so; they import ``plugins.base``, never the package), and the loading of a module's parent
package first, which is no edge: it circles only where the child imports a name the parent
defines (``from . import register_method``), and that statement is an edge to the parent.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sircil"

# top to bottom; a module's layer is that of its longest matching prefix
LAYERS = {
    "": 8,  # the package itself: __init__ loads the registries and offers the Python API
    "cli": 7, "__main__": 7,
    "sweep": 6, "packed_sweep": 6, "packed_worker": 6, "slurm": 6, "bench": 6, "bench_data": 6, "report": 6, "inference": 6, "compare": 6,
    "trainer": 5, "run_parts": 5,
    "methods": 4,
    "plugins": 3,
    "training": 2, "evaluate": 2,
    "data": 1, "models": 1, "metrics": 1, "distributed": 1, "runfolder": 1, "locks": 1, "paper": 1,
    "config": 0, "config_sections": 0, "config_io": 0, "version": 0,
}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"module sircil.{module} has no layer in tests/test_layers.py: add it")


def module_name(path: Path, root: Path = SRC) -> str:
    """Dotted name below the package ``root``; "" for the package itself."""
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path, source: str | None = None, root: Path = SRC) -> list[str]:
    """Modules of the package ``root`` imported by ``path`` (top level or inside functions), as
    dotted names below it; "" for the package itself (``from . import __version__`` in a module)."""
    package = list(path.relative_to(root).parts[:-1])  # what ``from . import`` names, in a package's __init__ too
    prefix = root.name + "."
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found += [".".join(a.name.split(".")[1:]) for a in node.names if a.name == root.name or a.name.startswith(prefix)]
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            target = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
        elif node.module and (node.module == root.name or node.module.startswith(prefix)):
            target = node.module.split(".")[1:]
        else:
            continue
        for alias in node.names:  # ``from x import y``: y is a module of x, or a name x defines
            submodule = root.joinpath(*target, alias.name + ".py").is_file() or root.joinpath(*target, alias.name).is_dir()
            found.append(".".join(target + [alias.name] if submodule else target))
    return found


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Each module of the package ``root`` -> the modules of it that it imports."""
    return {module_name(path, root): set(imports(path, root=root)) for path in sorted(root.rglob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None. Depth first: an edge to a module still on
    the walk's path closes a cycle."""
    on_path: list[str] = []
    done: set[str] = set()

    def walk(module: str) -> list[str] | None:
        on_path.append(module)
        for target in sorted(graph.get(module, ())):
            if target in on_path:
                return on_path[on_path.index(target):] + [target]
            if target not in done:
                cycle = walk(target)
                if cycle is not None:
                    return cycle
        on_path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = walk(module)
            if cycle is not None:
                return cycle
    return None


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) or "sircil" for p in MODULES])
def test_every_import_points_down(path):
    me = module_name(path)
    upward = [m for m in imports(path) if layer(m) > layer(me)]
    assert not upward, f"sircil.{me} (layer {layer(me)}) imports upward: {upward}"


def test_the_trainer_knows_no_plugin_and_no_method_knows_the_trainer():
    for name in ("trainer.py", "run_parts.py"):
        assert not re.search(r"\bsir\b", (SRC / name).read_text(), re.IGNORECASE), name
    for path in (SRC / "methods").glob("*.py"):
        assert "trainer" not in {m.split(".")[0] for m in imports(path)}, path.name


def test_the_layer_test_sees_an_upward_import():
    probe = SRC / "data" / "probe.py"  # not written: the source is given
    found = imports(probe, "from ..trainer import Trainer\nfrom ..config import Config\nfrom . import memory\n")
    assert found == ["trainer", "config", "data.memory"]
    assert layer("trainer") > layer(module_name(probe)) >= layer("config")


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(f"sircil.{m}" if m else "sircil" for m in cycle)


def test_the_cycle_finder_sees_a_cycle_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "fakepkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "1"\nfrom . import a\n')
    (pkg / "a.py").write_text("import fakepkg.sub.b\nimport os\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def version():\n    from .. import __version__\n\n    return __version__\n")
    assert import_graph(pkg) == {"": {"a"}, "a": {"sub.b"}, "sub": set(), "sub.b": {""}}
    assert find_cycle(import_graph(pkg)) == ["", "a", "sub.b", ""]
    (pkg / "version.py").write_text('__version__ = "1"\n')
    (pkg / "sub" / "b.py").write_text("def version():\n    from ..version import __version__\n\n    return __version__\n")
    assert find_cycle(import_graph(pkg)) is None
