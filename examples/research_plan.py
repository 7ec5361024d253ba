"""Research plan: orchestrator-worker as plan-and-execute.

An expensive planner writes a typed ``tm.Plan``: two independent searches
(which run concurrently) and a summary that depends on both, wired with
``{"$ref": "s1.sources"}``. Cheap workers execute it and a cheap synthesizer
writes the brief. The plan is recorded and returned: it is the audit trail.
``main()`` prints the cost of each role (planner, workers, synthesizer) next
to what the same tokens would cost on the planner's model, and the saving:
the plan-and-execute comparison that ``typedmesh cost RUN_ID`` also prints.

    python examples/research_plan.py
    TYPEDMESH_MODEL=openai:gpt-4o-mini python examples/research_plan.py

Offline, the searcher queries a small in-module corpus of illustrative
sources (example.org addresses, not real publications) through a tool.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

import typedmesh as tm
from typedmesh.models import model_from_env
from typedmesh.models.pricing import cost_of
from typedmesh.runtime.cost import CostReport, format_usd, run_cost

# -- contracts ------------------------------------------------------------------------


class Question(BaseModel):
    topic: str
    question: str


class Source(BaseModel):
    title: str
    url: str
    snippet: str
    stance: Literal["for", "against", "neutral"]


class SearchQuery(BaseModel):
    query: str
    max_results: int = Field(default=3, ge=1, le=10)


class SearchResults(BaseModel):
    query: str
    sources: list[Source]


class SummaryRequest(BaseModel):
    question: str
    evidence_for: list[Source]
    evidence_against: list[Source]


class Summary(BaseModel):
    findings: list[str]
    open_questions: list[str]
    citations: list[str]


class Briefing(BaseModel):
    """The synthesizer's input: the plan, every step's result, and the original task."""

    plan: tm.Plan
    results: list[tm.WorkerResult]
    task: Question  # filled by orchestrate from the run input


class ResearchBrief(BaseModel):
    answer: str
    findings: list[str]
    caveats: list[str]
    citations: list[str]


# -- the search tool over a small illustrative corpus ---------------------------------

CORPUS: list[Source] = [
    Source(
        title="Cold-climate heat pumps hold efficiency well below freezing",
        url="https://example.org/ccashp-field-trial",
        snippet="Field units averaged a seasonal COP of 2.6 across winters reaching -25 C, "
        "cutting heating energy use by more than half versus resistance heat.",
        stance="for",
    ),
    Source(
        title="Heat pump running costs compared with gas boilers",
        url="https://example.org/running-costs",
        snippet="With an electricity-to-gas price ratio under 3, a heat pump heats for less "
        "than a condensing gas boiler; above 4 it usually costs more.",
        stance="for",
    ),
    Source(
        title="Emissions benefits of heat pumps grow as grids decarbonise",
        url="https://example.org/emissions",
        snippet="Lifecycle emissions were 40-70% lower than gas heating on current grids, "
        "with the benefit rising each year as generation gets cleaner.",
        stance="for",
    ),
    Source(
        title="Upfront cost remains the main barrier to heat pump adoption",
        url="https://example.org/upfront-cost",
        snippet="Installed cold-climate systems cost two to three times a replacement gas "
        "boiler before incentives; payback ranged from 6 to 15 years.",
        stance="against",
    ),
    Source(
        title="Poorly insulated homes see weak heat pump performance in cold snaps",
        url="https://example.org/retrofit-risks",
        snippet="Undersized units in leaky homes fell back on resistance backup during cold "
        "snaps, erasing much of the efficiency that well-designed installs achieved.",
        stance="against",
    ),
    Source(
        title="Installer shortages slow heat pump rollouts",
        url="https://example.org/installers",
        snippet="Wait times for certified installers exceeded ten weeks in several regions, "
        "and design errors were the most common cause of comfort complaints.",
        stance="against",
    ),
]


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 3}


_STANCE_WORDS = {
    "for": {"benefits", "advantages", "savings", "efficiency"},
    "against": {"drawbacks", "risks", "barriers", "costs"},
}


@tm.tool
async def search_corpus(query: str, max_results: int = 3) -> list[Source]:
    """Full-text search over the research corpus; best matches first."""
    await asyncio.sleep(0.05)  # a network round trip: concurrent searches overlap
    wanted = _words(query)
    stance = next((s for s, words in _STANCE_WORDS.items() if wanted & words), None)

    def score(source: Source) -> int:
        return len(wanted & _words(f"{source.title} {source.snippet}"))

    pool = [s for s in CORPUS if stance is None or s.stance in (stance, "neutral")]
    ranked = sorted(pool, key=score, reverse=True)
    return [s for s in ranked if score(s) > 0][:max_results]


# -- models: offline by default, live when TYPEDMESH_MODEL is set --------------------


def offline_planner(request: tm.ModelRequest) -> dict[str, Any]:
    task = request.input_data()
    # the workers on offer, as data (the prompt lists them in prose): picked by input
    workers = request.context.workers if request.context is not None else []

    def taking(field: str) -> str:
        return next(w.name for w in workers if field in w.input_schema.get("properties", {}))

    search, summarize = taking("query"), taking("evidence_for")
    topic = task["topic"]
    return {
        "goal": task["question"],
        "steps": [
            {"id": "s1", "worker": search, "input": {"query": f"{topic} benefits savings"}},
            {"id": "s2", "worker": search, "input": {"query": f"{topic} drawbacks risks"}},
            {
                "id": "s3",
                "worker": summarize,
                "input": {
                    "question": task["question"],
                    "evidence_for": {"$ref": "s1.sources"},
                    "evidence_against": {"$ref": "s2.sources"},
                },
                "depends_on": ["s1", "s2"],
            },
        ],
    }


def offline_searcher(request: tm.ModelRequest) -> dict[str, Any]:
    query = request.input_data()
    found = [m.content for m in request.messages if m.role == "tool"]
    if not found:
        return {
            "tool_calls": [
                {
                    "id": "call_search",
                    "name": "search_corpus",
                    "arguments": {"query": query["query"], "max_results": query["max_results"]},
                }
            ]
        }
    sources = json.loads(found[-1]) if found[-1].startswith("[") else []
    return {"query": query["query"], "sources": sources}


def offline_summarizer(request: tm.ModelRequest) -> dict[str, Any]:
    brief = request.input_data()
    pro, con = brief["evidence_for"], brief["evidence_against"]
    findings = [f"For: {s['snippet']}" for s in pro]
    findings += [f"Against: {s['snippet']}" for s in con]
    open_questions = [f"Does this risk apply to the asker's case: {s['title']}?" for s in con]
    if not pro or not con:
        open_questions.append("The search found evidence on one side only.")
    citations = [s["url"] for s in [*pro, *con]]
    return {"findings": findings, "open_questions": open_questions, "citations": citations}


def offline_synthesizer(request: tm.ModelRequest) -> dict[str, Any]:
    briefing = request.input_data()
    summaries = [r["output"] for r in briefing["results"] if "findings" in r["output"]]
    findings = [f for s in summaries for f in s["findings"]]
    pro = sum(f.startswith("For:") for f in findings)
    con = sum(f.startswith("Against:") for f in findings)
    lean = "mostly yes" if pro > con else "mostly no" if con > pro else "it depends"
    answer = (
        f"{lean.capitalize()}, with conditions: {pro} finding(s) support it and {con} "
        "raise risks that decide the outcome case by case (see caveats). "
        f"Plan: {len(briefing['plan']['steps'])} steps toward '{briefing['plan']['goal']}'."
    )
    return {
        "answer": answer,
        "findings": findings,
        "caveats": [q for s in summaries for q in s["open_questions"]],
        "citations": [c for s in summaries for c in s["citations"]],
    }


# -- the flow -------------------------------------------------------------------------

planner = tm.Agent(
    "planner",
    version="1.0.0",
    input=Question,
    output=tm.Plan,
    model=model_from_env(tm.ScriptedModel(offline_planner, name="gpt-4o")),  # expensive: plans once
    instructions=(
        "Break the research question into a plan: independent searches first (they run in "
        "parallel), then one summary step that takes their sources."
    ),
)
searcher = tm.Agent(
    "searcher",
    version="1.1.0",
    input=SearchQuery,
    output=SearchResults,
    model=model_from_env(tm.ScriptedModel(offline_searcher, name="gpt-4o-mini")),
    instructions="Search the corpus for the query with the search_corpus tool; return the hits.",
    tools=[search_corpus],
)
summarizer = tm.Agent(
    "summarizer",
    version="1.0.0",
    input=SummaryRequest,
    output=Summary,
    model=model_from_env(tm.ScriptedModel(offline_summarizer, name="gpt-4o-mini")),
    instructions="Summarize the evidence for and against, citing every source by its URL.",
)
synthesizer = tm.Agent(
    "synthesizer",
    version="1.0.0",
    input=Briefing,
    output=ResearchBrief,
    model=model_from_env(tm.ScriptedModel(offline_synthesizer, name="gpt-4o-mini")),
    instructions="Answer the question from the plan's results; keep caveats and citations.",
)

flow = tm.orchestrate(planner, workers=[searcher, summarizer], synthesizer=synthesizer)

example_input = Question(
    topic="cold-climate heat pumps",
    question="Is a heat pump a good replacement for a gas boiler in a cold climate?",
)

intent = tm.Intent(
    goal="Advise a homeowner deciding how to replace a gas boiler",
    constraints=["cite every source", "state the conditions under which the advice fails"],
    audience="a homeowner",
)


# -- the cost report ------------------------------------------------------------------


@dataclass(frozen=True)
class AgentCost:
    """One agent invocation's spend, and what its tokens would cost on another model."""

    step: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cost_on_baseline_usd: float


def cost_by_agent(trace: tm.TraceNode, baseline_model: str) -> list[AgentCost]:
    """Every node that called a model, priced as run and as if on ``baseline_model``."""
    return [
        AgentCost(
            step=node.name,
            model=",".join(node.models),
            input_tokens=node.usage.input_tokens,
            output_tokens=node.usage.output_tokens,
            cost_usd=node.usage.cost_usd,
            cost_on_baseline_usd=cost_of(
                baseline_model, node.usage.input_tokens, node.usage.output_tokens
            ),
        )
        for node in trace.walk()
        if node.usage.model_calls
    ]


def planner_model(trace: tm.TraceNode) -> str:
    """The model the planner actually ran on, as the trace recorded it."""
    return next(n.models[0] for n in trace.walk() if n.name == planner.name and n.models)


def plan_and_execute(report: CostReport) -> list[str]:
    """The orchestrate node's cost by role, as run and on the planner's model, and the saving."""
    [plan] = report.plans  # one orchestrate node in this flow
    places = report.places()  # every amount exact, all with the same decimals

    def usd(pusd: int) -> str:
        return format_usd(pusd, places)

    on = f"on {plan.planner_model}"
    lines = [f"{'node':<16}{'role':<13}{'model':<13}{'tokens':>7}{'cost':>13}{on:>13}"]
    for role in plan.roles:
        as_planner = "unpriced" if role.on_planner_pusd is None else usd(role.on_planner_pusd)
        lines.append(
            f"{role.node:<16}{role.role:<13}{', '.join(role.models):<13}"
            f"{role.spend.total_tokens:>7}{usd(role.spend.cost_pusd):>13}{as_planner:>13}"
        )
    if plan.all_on_planner_pusd is None:
        lines.append(f"plan-and-execute: {usd(plan.actual_pusd)}; {plan.planner_model}: unpriced")
    else:
        lines.append(
            f"plan-and-execute: {usd(plan.actual_pusd)} vs {usd(plan.all_on_planner_pusd)} with "
            f"{plan.planner_model} doing every call: {plan.saving_pct:.1f}% saved"
        )
    return lines


def main() -> None:
    journal = tm.MemoryJournal()  # `typedmesh cost` reads the same report from a journal file
    result = tm.run(flow, example_input, intent=intent, journal=journal)
    outcome: tm.Orchestrated[ResearchBrief] = result.output
    print("plan:")
    for s in outcome.plan.steps:
        after = f"  (after {', '.join(s.depends_on)})" if s.depends_on else ""
        print(f"  {s.id}: {s.worker} {json.dumps(s.input)}{after}")
    print(f"answer: {outcome.output.answer}")
    for finding in outcome.output.findings:
        print(f"  - {finding}")
    print(f"  caveats: {'; '.join(outcome.output.caveats)}")
    print(f"  sources: {', '.join(outcome.output.citations)}")

    report = run_cost(journal, result.run_id)
    print()
    print("\n".join(plan_and_execute(report)))
    u = result.usage
    print(
        f"usage: {u.model_calls} model calls, {u.tool_calls} tool calls, "
        f"{u.input_tokens} in + {u.output_tokens} out"
    )
    print(f"cost: ${result.cost_usd:.6f}  (run {result.run_id})")


if __name__ == "__main__":
    main()
