"""The ``typedmesh`` command line: run a flow and see its result, trace and cost."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.json import JSON

from .contracts import Intent
from .errors import InputValidationError, RunError, TypedMeshError, UserError
from .runtime.budget import Budget
from .runtime.run import arun
from .step import Step

app = typer.Typer(
    help="typedmesh: typed, journaled multi-agent flows.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)


@app.callback()
def _root() -> None:
    """typedmesh: typed, journaled multi-agent flows."""


def load_target(spec: str) -> Any:
    """Load ``module:attr`` where module is a dotted name or a path to a .py file."""
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise typer.BadParameter(f"expected MODULE:ATTR, got {spec!r}")
    if module_part.endswith(".py") or "/" in module_part:
        path = Path(module_part).resolve()
        if not path.exists():
            raise typer.BadParameter(f"no such file: {module_part}")
        name = f"_typedmesh_target_{path.stem}"
        spec_obj = importlib.util.spec_from_file_location(name, path)
        if spec_obj is None or spec_obj.loader is None:
            raise typer.BadParameter(f"cannot import {module_part}")
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent))
        spec_obj.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(module_part)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise typer.BadParameter(f"{module_part} has no attribute {attr!r}") from None


def _json_arg(text: str, what: str) -> Any:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{what} is not valid JSON: {exc}") from None


@app.command("run")
def run_command(
    target: Annotated[str, typer.Argument(help="the flow, as MODULE:ATTR or path/file.py:ATTR")],
    input: Annotated[str, typer.Option("--input", "-i", help="input JSON, or @file.json")],
    intent: Annotated[str | None, typer.Option(help="Intent JSON, or @file.json")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON document")] = False,
    max_tokens: Annotated[int | None, typer.Option(help="hard token budget")] = None,
    max_cost: Annotated[float | None, typer.Option(help="hard cost budget in USD")] = None,
    max_model_calls: Annotated[int | None, typer.Option(help="hard model-call budget")] = None,
    grant: Annotated[list[str] | None, typer.Option(help="a scope the run grants (repeat)")] = None,
    run_id: Annotated[str | None, typer.Option(help="the run id (default: random)")] = None,
) -> None:
    """Run a flow on an input; print its output, trace tree, usage and cost."""
    flow = load_target(target)
    if not isinstance(flow, Step):
        raise typer.BadParameter(f"{target} is a {type(flow).__name__}, not a typedmesh Step")
    data = _json_arg(input, "--input")
    run_intent = Intent.model_validate(_json_arg(intent, "--intent")) if intent else None
    budget = None
    if max_tokens is not None or max_cost is not None or max_model_calls is not None:
        budget = Budget(
            max_tokens=max_tokens, max_cost_usd=max_cost, max_model_calls=max_model_calls
        )
    try:
        result = asyncio.run(
            arun(flow, data, intent=run_intent, budget=budget, grant=grant, run_id=run_id)
        )
    except InputValidationError as exc:
        _fail(exc, as_json, code=2)
    except RunError as exc:
        _fail(exc, as_json, code=1)
    except UserError as exc:
        _fail(exc, as_json, code=2)
    if as_json:
        print(json.dumps(result.to_dict(), default=str))
        return
    from .render import trace_tree, usage_table

    console.rule(f"[bold]{flow.name}[/] run {result.run_id}")
    console.print(JSON(result.output.model_dump_json()))
    console.rule("trace")
    console.print(trace_tree(result.trace))
    console.print(usage_table(result.trace, result.usage))
    console.print(
        f"[bold]cost:[/] ${result.cost_usd:.6f}   [bold]tokens:[/] "
        f"{result.usage.total_tokens}   [bold]model calls:[/] "
        f"{result.usage.model_calls}"
    )


def _fail(exc: TypedMeshError, as_json: bool, *, code: int) -> None:
    partial = getattr(exc, "partial", None)
    if as_json:
        print(
            json.dumps(
                {
                    "error": type(exc).__name__,
                    "message": str(exc),
                    "run_id": getattr(exc, "run_id", None),
                    "step_path": getattr(exc, "step_path", None),
                    "partial": partial.to_dict() if partial is not None else None,
                },
                default=str,
            )
        )
    else:
        errors.print(f"[red bold]{type(exc).__name__}[/]: {exc}")
        if partial is not None:
            from .render import trace_tree

            errors.print(trace_tree(partial))
    raise typer.Exit(code)


def main() -> None:
    """Entry point of the ``typedmesh`` console script."""
    app()


if __name__ == "__main__":
    main()
