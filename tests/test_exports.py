"""The public API is exactly what __all__ says, sorted and importable."""

from __future__ import annotations

import subprocess
import sys

import typedmesh as tm


def test_all_is_sorted_and_resolves() -> None:
    assert tm.__all__ == sorted(tm.__all__)
    for name in tm.__all__:
        assert getattr(tm, name) is not None


def test_design_names_are_exported() -> None:
    for name in (
        "Agent",
        "step",
        "tool",
        "sequential",
        "parallel",
        "loop",
        "orchestrate",
        "run",
        "arun",
        "RunContext",
        "ScriptedModel",
        "SchemaModel",
        "Budget",
        "RetryPolicy",
        "Intent",
        "Claim",
        "Provenance",
        "Conflict",
        "SynthesizedReport",
        "Evaluation",
        "Plan",
        "PlanStep",
        "ContractError",
        "OutputValidationError",
        "NonDeterminismError",
        "InDoubtError",
        "StaleVersion",
        "AlreadyClaimed",
        "BudgetExceeded",
        "ToolDenied",
    ):
        assert name in tm.__all__, name


def test_errors_form_one_tree() -> None:
    for name in dir(tm.errors):
        obj = getattr(tm.errors, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, Exception)
            and obj.__module__ == "typedmesh.errors"
        ):
            assert issubclass(obj, tm.TypedMeshError), name


def test_import_does_not_load_provider_sdks_or_cli() -> None:
    code = (
        "import sys, typedmesh; "
        "print(sorted(m for m in ('openai', 'anthropic', 'rich', 'typer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
