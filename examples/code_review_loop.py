"""Code review loop: a writer drafts, a reviewer gates, capped at three rounds.

``tm.loop(writer, reviewer, max_rounds=3)`` is the planner-generator-evaluator
pattern: the reviewer returns a ``tm.Evaluation``; from round two on the
writer is shown its previous draft and the feedback (in its prompt, and in
the ``previous_draft`` and ``feedback`` fields of its input, which the loop
fills because ``Spec`` declares them). There is no unbounded
loop: ``max_rounds`` is required, and the result says whether a draft passed
or the cap was hit.

    python examples/code_review_loop.py
    TYPEDMESH_MODEL=anthropic:claude-3-5-haiku-latest python examples/code_review_loop.py

Offline, the reviewer really inspects the draft (it parses it with ``ast``):
it fails a first draft that lacks a docstring and does not reject invalid
sizes, and passes the revision the writer makes from that feedback. (The
offline writer knows one implementation, ``chunk``; a live model writes any.)
"""

from __future__ import annotations

import ast
import re
from typing import Any

from pydantic import BaseModel, Field

import typedmesh as tm
from typedmesh.models import model_from_env

# -- contracts ------------------------------------------------------------------------


class Draft(BaseModel):
    function_name: str
    code: str
    notes: str


class Spec(BaseModel):
    """What to write; from round two the loop fills the last draft and its review."""

    function_name: str
    description: str
    edge_cases: list[str] = Field(default_factory=list)
    previous_draft: Draft | None = None
    feedback: str | None = None


class Review(BaseModel):
    """The reviewer's input; the loop fills both fields."""

    draft: Draft  # the writer's output
    task: Spec  # what the writer was asked for


# -- models: offline by default, live when TYPEDMESH_MODEL is set --------------------


def offline_writer(request: tm.ModelRequest) -> dict[str, Any]:
    spec = request.input_data()
    name = spec["function_name"]
    feedback = (spec.get("feedback") or "").lower()  # filled by the loop from round two
    lines = [
        "from collections.abc import Sequence",
        "from typing import TypeVar",
        "",
        'T = TypeVar("T")',
        "",
        "",
        f"def {name}(items: Sequence[T], size: int) -> list[list[T]]:",
    ]
    fixed = []
    if "docstring" in feedback:
        lines.append(f'    """{spec["description"].rstrip(".")}.')
        if spec["edge_cases"]:
            lines += ["", "    Edge cases:"]
            lines += [f"    - {case}" for case in spec["edge_cases"]]
        lines.append('    """')
        fixed.append("added a docstring")
    if "valueerror" in feedback:
        lines.append("    if size <= 0:")
        lines.append('        raise ValueError(f"size must be positive, got {size}")')
        fixed.append("size <= 0 now raises ValueError")
    lines.append("    return [list(items[i : i + size]) for i in range(0, len(items), size)]")
    notes = "Revision: " + ", ".join(fixed) + "." if fixed else "First draft: list slicing."
    return {"function_name": name, "code": "\n".join(lines) + "\n", "notes": notes}


def review_problems(spec: dict[str, Any], code: str) -> list[str]:
    """Concrete problems a reviewer finds in ``code`` for ``spec`` (empty: it passes)."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"the draft does not parse: {exc}"]
    name = spec["function_name"]
    fn = next(
        (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name), None
    )
    if fn is None:
        return [f"there is no function named {name!r}"]
    problems = []
    if ast.get_docstring(fn) is None:
        problems.append(f"{name} has no docstring: say what it returns and list the edge cases.")
    raised = {
        n.exc.func.id
        for n in ast.walk(fn)
        if isinstance(n, ast.Raise)
        and isinstance(n.exc, ast.Call)
        and isinstance(n.exc.func, ast.Name)
    }
    for case in spec["edge_cases"]:
        wanted = re.search(r"raises (\w+)", case)
        if wanted and wanted.group(1) not in raised:
            problems.append(f"edge case not handled: '{case}' (no `raise {wanted.group(1)}`).")
    args = [*fn.args.args, *fn.args.kwonlyargs]
    if fn.returns is None or any(a.annotation is None for a in args):
        problems.append(f"{name} is missing type hints.")
    return problems


def offline_reviewer(request: tm.ModelRequest) -> dict[str, Any]:
    review = request.input_data()
    problems = review_problems(review["task"], review["draft"]["code"])
    if not problems:
        return {
            "passed": True,
            "score": 0.92,
            "feedback": "Looks good: typed, documented, and every listed edge case is handled.",
        }
    return {
        "passed": False,
        "score": round(max(0.1, 0.9 - 0.2 * len(problems)), 2),
        "feedback": "\n".join(f"- {p}" for p in problems),
    }


# -- the flow -------------------------------------------------------------------------

writer = tm.Agent(
    "writer",
    version="0.4.0",
    input=Spec,
    output=Draft,
    model=model_from_env(tm.ScriptedModel(offline_writer, name="gpt-4o-mini")),
    instructions=(
        "Write the Python function the spec describes: standard library only, type hints, "
        "a docstring, and explicit handling of every listed edge case. Put the whole module "
        "in 'code' and what changed in 'notes'."
    ),
)
reviewer = tm.Agent(
    "reviewer",
    version="1.0.0",
    input=Review,
    output=tm.Evaluation,
    model=model_from_env(tm.ScriptedModel(offline_reviewer, name="gpt-4o")),
    instructions=(
        "Review the draft against the task. Pass it only when it is typed, documented and "
        "handles every listed edge case; otherwise list each concrete problem as feedback."
    ),
)

flow = tm.loop(writer, reviewer, max_rounds=3, name="code_review")

example_input = Spec(
    function_name="chunk",
    description="Split a sequence into consecutive lists of length size; the last may be shorter",
    edge_cases=["an empty sequence gives []", "size <= 0 raises ValueError"],
)

intent = tm.Intent(
    goal="A helper ready to merge into a production codebase",
    constraints=["standard library only"],
    success_criteria=["documented", "every edge case in the spec handled"],
    audience="the reviewing engineer",
)


def main() -> None:
    result = tm.run(flow, example_input, intent=intent)
    outcome: tm.LoopResult[Draft] = result.output
    verdict = "passed" if outcome.passed else "hit the round cap"
    print(f"== {verdict} after {outcome.rounds} round(s)")
    for n, evaluation in enumerate(outcome.evaluations, 1):
        print(f"  round {n}: passed={evaluation.passed} score={evaluation.score:.2f}")
        for line in evaluation.feedback.splitlines():
            print(f"    {line}")
    print(f"-- {outcome.output.notes}\n{outcome.output.code}")
    u = result.usage
    print(f"usage: {u.model_calls} model calls, {u.input_tokens} in + {u.output_tokens} out")
    print(f"cost: ${result.cost_usd:.6f}  (run {result.run_id})")


if __name__ == "__main__":
    main()
