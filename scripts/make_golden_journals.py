"""Regenerate tests/journals/*.jsonl from the offline examples.

Golden journals pin every request the examples make. A deliberate change to a
prompt or a contract changes them: rerun this script and review the diff.

    .venv/bin/python scripts/make_golden_journals.py
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import typedmesh as tm
from typedmesh.journal import export_jsonl

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("bull_bear", "support_pipeline", "code_review_loop", "research_plan")


def load_example(name: str) -> ModuleType:
    sys.path.insert(0, str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location(
        f"golden_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def main() -> None:
    os.environ.pop("TYPEDMESH_MODEL", None)
    out = ROOT / "tests" / "journals"
    out.mkdir(parents=True, exist_ok=True)
    for name in EXAMPLES:
        module = load_example(name)
        journal = tm.MemoryJournal()
        tm.run(
            module.flow,
            module.example_input,
            intent=getattr(module, "intent", None),
            journal=journal,
            run_id=f"golden-{name}",
        )
        lines = export_jsonl(journal, f"golden-{name}", out / f"{name}.jsonl")
        print(f"{name}: {lines} lines")


if __name__ == "__main__":
    main()
