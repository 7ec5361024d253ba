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
