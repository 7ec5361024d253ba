"""The layers of DESIGN.md hold: imports only go down.

    cli, render, telemetry, testing, the package root    print, export, test helpers
    patterns, agent, tools, provenance                  compose Steps, talk to models
    runtime                                             run context, effects, executors
    journal, models                                     storage and providers
    contracts, step, errors, handoff, validation, ...   the user's types

Imports under ``if TYPE_CHECKING:`` are annotations only and are not counted.
The journal imports neither models nor the runtime, and nothing in the runtime
imports the package root.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "typedmesh"

LAYERS: list[tuple[str, ...]] = [
    (
        "typedmesh.contracts",
        "typedmesh.errors",
        "typedmesh.step",
        "typedmesh.handoff",
        "typedmesh.validation",
        "typedmesh.decoding",
        "typedmesh._version",
        "typedmesh._sqlite",
    ),
    ("typedmesh.journal", "typedmesh.models", "typedmesh.state"),
    ("typedmesh.runtime",),
    (
        "typedmesh.patterns",
        "typedmesh.agent",
        "typedmesh.tools",
        "typedmesh.provenance",
        "typedmesh.agent_tools",
    ),
    (
        "typedmesh.cli",
        "typedmesh.cli_journal",
        "typedmesh.cli_reliability",
        "typedmesh.reliability",
        "typedmesh.render",
        "typedmesh.telemetry",
        "typedmesh.testing",
        "typedmesh.serve",
        "typedmesh",
    ),
]
FORBIDDEN = {
    "typedmesh.journal": ("typedmesh.models", "typedmesh.runtime", "typedmesh.patterns"),
    "typedmesh.models": ("typedmesh.journal", "typedmesh.runtime", "typedmesh.patterns"),
    "typedmesh.runtime": ("typedmesh.agent", "typedmesh.patterns"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_of(module: str) -> int:
    best = max(
        (
            (len(package), index)
            for index, packages in enumerate(LAYERS)
            for package in packages
            if in_package(module, package)
        ),
        default=None,
    )
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def imports(path: Path) -> set[str]:
    module = module_name(path)
    tree = ast.parse(path.read_text())
    annotation_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in annotation_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if in_package(target, "typedmesh"):
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if in_package(a.name, "typedmesh")}
    return found


MODULES = sorted(ROOT.rglob("*.py"))


def violations(module: str, targets: set[str]) -> list[str]:
    mine = layer_of(module)
    found = []
    for target in sorted(targets):
        if target == "typedmesh" and module != "typedmesh":
            if mine != len(LAYERS) - 1:
                found.append(f"{module} imports the package root")
            continue
        if layer_of(target) > mine:
            found.append(f"{module} (layer {mine}) imports {target} from above")
        for package, banned in FORBIDDEN.items():
            if in_package(module, package) and any(in_package(target, b) for b in banned):
                found.append(f"{module} must not import {target}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_only_go_down(path: Path) -> None:
    assert violations(module_name(path), imports(path)) == []


def test_the_check_catches_what_it_forbids() -> None:
    assert violations("typedmesh.journal.events", {"typedmesh.runtime.context"})
    assert violations("typedmesh.journal.trace", {"typedmesh.models.base"})
    assert violations("typedmesh.runtime.run", {"typedmesh"})
    assert violations("typedmesh.errors", {"typedmesh.journal"})
    assert not violations("typedmesh.agent", {"typedmesh.runtime.context", "typedmesh.errors"})
