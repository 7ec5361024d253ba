"""Release notes: a writer that answers in prose, a checker in code, a capped loop.

Not every agent answers with a record. The ``writer`` here has ``output=str``:
it is asked for plain text (no JSON mode), and its answer is a ``tm.Text``,
still a typed value checked at each boundary, journaled and replayed. The
reviewer is not a model but a ``@tm.step`` that checks what code can check:
every change is mentioned, and the notes fit the length asked for. Its
``tm.Evaluation`` gates the ``tm.loop``, capped at three rounds; from round
two the writer sees its previous draft and the feedback as input fields.

    python examples/release_notes.py
    python examples/release_notes.py --stream     # the prose as it is written
    typedmesh run examples/release_notes.py:flow -i @changes.json --follow
    TYPEDMESH_MODEL=openai:gpt-4o-mini python examples/release_notes.py

Offline, the writer forgets the last change in its first draft, the checker
says which one, and the second draft has them all.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models import model_from_env

# -- contracts ------------------------------------------------------------------------


class Change(BaseModel):
    key: str
    """A word the notes must mention for this change (a feature or module name)."""
    summary: str


class Changes(BaseModel):
    """What to write about; from round two the loop fills the last draft and its review."""

    version: str
    changes: list[Change]
    max_words: int = 120
    previous_draft: tm.Text | None = None
    feedback: str | None = None


class Review(BaseModel):
    """The checker's input; the loop fills both fields."""

    draft: tm.Text
    task: Changes


# -- the writer: offline by default, live when TYPEDMESH_MODEL is set ----------------


def offline_writer(request: tm.ModelRequest) -> str:
    task = request.input_data()
    changes = task["changes"]
    if task.get("feedback") is None:  # a first draft that forgets the last change
        changes = changes[:-1]
    lines = [f"Version {task['version']} is out."]
    lines += [f"- {c['key']}: {c['summary']}" for c in changes]
    return "\n".join(lines) + "\n"


writer = tm.Agent(
    "writer",
    input=Changes,
    output=str,
    model=model_from_env(tm.ScriptedModel(offline_writer, name="gpt-4o-mini")),
    instructions=(
        "Write short release notes in plain text for users: one line per change, "
        "naming each change's key word. No JSON."
    ),
)


@tm.step(name="checker")
def check_notes(review: Review) -> tm.Evaluation:
    """What code can check, it checks: every change named, the length asked for."""
    text = review.draft.text.lower()
    missing = [c.key for c in review.task.changes if c.key.lower() not in text]
    words = len(review.draft.text.split())
    problems = [f"mention {key!r}" for key in missing]
    if words > review.task.max_words:
        problems.append(f"cut it to {review.task.max_words} words (it has {words})")
    return tm.Evaluation(
        passed=not problems,
        score=1.0 - len(missing) / max(len(review.task.changes), 1),
        feedback="; ".join(problems) or "all changes covered",
    )


flow = tm.loop(writer, check_notes, max_rounds=3, name="release_notes")

example_input = Changes(
    version="2.3.0",
    changes=[
        Change(key="sessions", summary="multi-turn conversations, resumable like any run"),
        Change(key="approval", summary="tool calls that wait for a person, durably"),
        Change(key="text", summary="agents may answer in plain text with output=str"),
    ],
)


async def stream_notes() -> tm.RunResult[Any]:
    """Print the writer's prose as it is written, then return the finished run."""
    items = tm.stream(flow, example_input)
    async for item in items:
        if isinstance(item, tm.TokenDelta):
            print(item.text, end="", flush=True)
        elif isinstance(item, tm.RunEvent) and item.type == "step.started":
            step = item.path.rsplit("/", 1)[-1]  # writer[1], checker[1], writer[2]...
            if step.startswith("writer"):
                print(f"--- {step}, as it writes ---")
            elif step.startswith("checker"):
                print(f"--- {step} ---")
    return await items


def main(argv: Sequence[str] = ()) -> None:
    result = asyncio.run(stream_notes()) if "--stream" in argv else tm.run(flow, example_input)
    outcome = result.output
    print(f"passed: {outcome.passed} after {outcome.rounds} round(s)")
    for round_number, evaluation in enumerate(outcome.evaluations, start=1):
        print(f"  round {round_number}: {evaluation.feedback}")
    print()
    print(outcome.output)
    u = result.usage
    print(f"\nusage: {u.model_calls} model calls, {u.input_tokens} in + {u.output_tokens} out")
    print(f"cost: ${result.cost_usd:.6f}  (run {result.run_id})")


if __name__ == "__main__":
    main(sys.argv[1:])
