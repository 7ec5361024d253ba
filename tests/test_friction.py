"""Friction a new user hit: offline models that pass the framework's own gates,
trace lines for tools and loops, offline models labelled, run-id prefixes."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

import typedmesh as tm
from typedmesh.models.base import Message, ModelRequest

# -- SchemaModel passes parallel's and orchestrate's gates -----------------------------


class Ticket(BaseModel):
    text: str


class Routing(BaseModel):
    team: str
    score: float


class Triage(BaseModel):
    category: Literal["billing", "bug", "account", "other"]
    urgency: int = Field(ge=1, le=5)
    routing: Routing
    tags: list[str]


class Opinions(BaseModel):
    rules: Triage
    llm: Triage
    history: Triage


class Decision(BaseModel):
    category: str
    conflicts: list[tm.Conflict] = []


def triage_flow(seed: int) -> tm.Step[Ticket, Decision]:
    def branch(name: str, offset: int) -> tm.Agent[Ticket, Triage]:
        return tm.Agent(name, input=Ticket, output=Triage, model=tm.SchemaModel(seed=seed + offset))

    merge = tm.Agent("merge", input=Opinions, output=Decision, model=tm.SchemaModel(seed=seed))
    return tm.parallel(
        merge=merge, rules=branch("rules", 0), llm=branch("llm", 1), history=branch("history", 2)
    )


@pytest.mark.parametrize("seed", range(8))
def test_schema_model_everywhere_passes_a_parallel_merge(seed: int) -> None:
    result = tm.run(triage_flow(seed), {"text": "I was charged twice"})
    conflicts = result.output.conflicts
    assert conflicts, "different seeds disagree somewhere"
    assert all(c.note.strip() for c in conflicts)
    assert {c.field for c in conflicts} >= {"routing.team"}


def test_schema_model_notes_every_field_the_notes_schema_requires() -> None:
    schema = {
        "type": "object",
        "properties": {
            "summary": {"type": "string"},
            "conflict_notes": {"type": "object", "required": ["a.b", "c"]},
        },
        "required": ["summary", "conflict_notes"],
    }
    request = ModelRequest(messages=[Message(role="user", content="{}")], output_schema=schema)
    response = asyncio.run(tm.SchemaModel().generate(request))
    notes = json.loads(response.content or "")["conflict_notes"]
    assert set(notes) >= {"a.b", "c"} and all(n.strip() for n in notes.values())


class Question(BaseModel):
    topic: str


class Query(BaseModel):
    q: str = Field(min_length=1)
    limit: int = Field(ge=1, le=10)


class Found(BaseModel):
    hits: list[str]


class Summary(BaseModel):
    text: str


@pytest.mark.parametrize("seed", range(4))
def test_schema_model_everywhere_passes_an_orchestrate_plan(seed: int) -> None:
    search = tm.Agent("search", input=Query, output=Found, model=tm.SchemaModel(seed=seed))
    summarize = tm.Agent("summarize", input=Found, output=Summary, model=tm.SchemaModel())
    planner = tm.Agent("planner", input=Question, output=tm.Plan, model=tm.SchemaModel(seed=seed))
    writer = tm.Agent("writer", input=tm.PlanExecution, output=Summary, model=tm.SchemaModel())
    flow = tm.orchestrate(planner, workers=[search, summarize], synthesizer=writer)
    result = tm.run(flow, {"topic": "refunds"})
    assert result.output.plan_attempts == 1
    assert sorted(s.worker for s in result.output.plan.steps) == ["search", "summarize"]
    assert len(result.output.results) == 2


# -- the text trace shows tool calls and a loop's outcome ------------------------------


@tm.tool
def lookup(order_id: str) -> str:
    """Look an order up."""
    if order_id == "missing":
        raise tm.ToolError("no such order", tool="lookup")
    return f"order {order_id}: shipped"


class Answer(BaseModel):
    text: str


class Draft(BaseModel):
    text: str


class Review(BaseModel):
    draft: Draft
    round: int


def _text(root: tm.TraceNode) -> str:
    from rich.console import Console

    from typedmesh.render import trace_tree

    console = Console(width=200, record=True, color_system=None)
    console.print(trace_tree(root))
    return console.export_text()


def test_trace_shows_successful_and_failed_tool_calls() -> None:
    model = tm.ScriptedModel(
        [
            {"tool_calls": [{"name": "lookup", "arguments": {"order_id": "A1"}}]},
            {"tool_calls": [{"name": "lookup", "arguments": {"order_id": "missing"}}]},
            Answer(text="shipped"),
        ]
    )
    agent = tm.Agent("support", input=Ticket, output=Answer, model=model, tools=[lookup])
    result = tm.run(agent, {"text": "where is A1?"})
    text = _text(result.trace)
    assert 'tool lookup(order_id="A1") ok' in text
    assert 'tool lookup(order_id="missing") error: ' in text


@pytest.mark.parametrize(
    ("passing", "expected"),
    [(2, "loop passed after 2 rounds"), (9, "loop capped after 3 rounds: not passed")],
)
def test_trace_shows_a_loops_outcome(passing: int, expected: str) -> None:
    writer = tm.Agent("writer", input=Ticket, output=Draft, model=tm.SchemaModel())

    @tm.step(name="reviewer")
    def reviewer(r: Review) -> tm.Evaluation:
        ok = r.round >= passing
        return tm.Evaluation(passed=ok, score=1.0 if ok else 0.2, feedback="" if ok else "more")

    result = tm.run(tm.loop(writer, reviewer, max_rounds=3), {"text": "x"})
    assert expected in _text(result.trace)
