"""The module layering of docs/architecture.md: every import points down (or within a layer)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sircil"

# top to bottom; a module's layer is that of its longest matching prefix
LAYERS = {
    "cli": 7, "__main__": 7,
    "sweep": 6, "packed_sweep": 6, "packed_worker": 6, "bench": 6, "bench_data": 6, "report": 6, "inference": 6, "compare": 6,
    "trainer": 5,
    "methods": 4,
    "plugins": 3,
    "training": 2, "evaluate": 2,
    "data": 1, "models": 1, "metrics": 1, "distributed": 1, "runfolder": 1, "locks": 1, "paper": 1,
    "config": 0, "config_sections": 0, "config_io": 0,
}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"module sircil.{module} has no layer in tests/test_layers.py: add it")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path, source: str | None = None) -> list[str]:
    """sircil modules imported by ``path`` (top level or inside functions), as dotted names below sircil."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("sircil"):
                target = node.module.split(".")[1:]
            else:
                continue
            if not target:  # ``from . import x``: x is a module of the package, or the version
                found += [n.name for n in node.names if n.name != "__version__"]
            else:
                found += [".".join(target + [n.name]) if (SRC.joinpath(*target, n.name + ".py").is_file() or SRC.joinpath(*target, n.name).is_dir()) else ".".join(target) for n in node.names]
    return found


MODULES = [p for p in sorted(SRC.rglob("*.py")) if p != SRC / "__init__.py"]


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) or "sircil" for p in MODULES])
def test_every_import_points_down(path):
    me = module_name(path)
    upward = [m for m in imports(path) if layer(m) > layer(me)]
    assert not upward, f"sircil.{me} (layer {layer(me)}) imports upward: {upward}"


def test_the_trainer_knows_no_plugin_and_no_method_knows_the_trainer():
    assert not re.search(r"\bsir\b", (SRC / "trainer.py").read_text(), re.IGNORECASE)
    for path in (SRC / "methods").glob("*.py"):
        assert "trainer" not in {m.split(".")[0] for m in imports(path)}, path.name


def test_the_layer_test_sees_an_upward_import():
    probe = SRC / "data" / "probe.py"  # not written: the source is given
    found = imports(probe, "from ..trainer import Trainer\nfrom ..config import Config\nfrom . import memory\n")
    assert found == ["trainer", "config", "data.memory"]
    assert layer("trainer") > layer(module_name(probe)) >= layer("config")
