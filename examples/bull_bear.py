"""Bull vs bear: a parallel split-and-merge whose merge surfaces conflicts.

Two analysts argue opposite cases for one ticker at the same time; a
synthesizer receives both typed verdicts. The framework compares them itself
and stamps every disagreement into the report as a ``Conflict`` holding each
side's values verbatim; the synthesizer writes only its note on each (the
``conflict_notes`` its output schema asks for), so nothing is averaged away,
re-typed or dropped.

    python examples/bull_bear.py            # offline, deterministic
    python examples/bull_bear.py NVDA       # another ticker
    TYPEDMESH_MODEL=openai:gpt-4o-mini python examples/bull_bear.py
    typedmesh run examples/bull_bear.py:flow --input '{"ticker": "ACME"}'

Offline, the analysts work from synthetic fundamentals derived from the
ticker (they are illustrative, not market data); the models are named after
real ones so the cost report shows what the run would cost on them.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

import typedmesh as tm
from typedmesh.models import model_from_env

# -- contracts ------------------------------------------------------------------------


class Task(BaseModel):
    ticker: str = Field(min_length=1, max_length=10)


class AgentVerdict(BaseModel):
    position: Literal["bull", "bear"]
    claims: list[tm.Claim]  # each Claim's provenance is stamped by the framework
    risks: list[str]
    confidence: float = Field(ge=0, le=1)


class Debate(BaseModel):
    """The merge input: one field per branch, typed as that branch's output."""

    bull: AgentVerdict
    bear: AgentVerdict


# -- models: offline by default, live when TYPEDMESH_MODEL is set --------------------


def fundamentals(ticker: str) -> dict[str, float]:
    """Synthetic, deterministic figures for a ticker: both analysts see the same ones."""
    h = hashlib.sha256(ticker.upper().encode()).digest()
    return {
        "growth": 4 + h[0] % 30,  # revenue growth, % y/y
        "gross_margin": 35 + h[1] % 40,  # %
        "fcf_margin": 3 + h[2] % 20,  # free cash flow, % of revenue
        "forward_pe": 14 + h[3] % 40,  # price / next year's earnings
        "net_debt_ebitda": (h[4] % 35) / 10,
        "top_customer": 6 + h[5] % 30,  # % of revenue
    }


def _evidence(ticker: str, text: str) -> list[str]:
    return [f"synthetic fundamentals for {ticker}: {text}"]


def offline_bull(request: tm.ModelRequest) -> dict[str, Any]:
    ticker = request.input_data()["ticker"].upper()
    f = fundamentals(ticker)
    claims = [
        {
            "statement": f"{ticker} is compounding revenue at {f['growth']:.0f}% a year.",
            "evidence": _evidence(ticker, f"revenue growth {f['growth']:.0f}% y/y"),
        },
        {
            "statement": f"A {f['gross_margin']:.0f}% gross margin funds growth without dilution.",
            "evidence": _evidence(ticker, f"gross margin {f['gross_margin']:.0f}%"),
        },
        {
            "statement": f"Free cash flow of {f['fcf_margin']:.0f}% of revenue "
            "self-funds the roadmap.",
            "evidence": _evidence(ticker, f"FCF margin {f['fcf_margin']:.0f}%"),
        },
    ]
    risks = [
        f"Valuation: {f['forward_pe']:.0f}x forward earnings leaves little room for a miss.",
        f"A growth slowdown below {f['growth'] / 2:.0f}% would break the thesis.",
    ]
    confidence = min(0.9, 0.45 + f["growth"] / 100 + f["fcf_margin"] / 200)
    return {"position": "bull", "claims": claims, "risks": risks, "confidence": confidence}


def offline_bear(request: tm.ModelRequest) -> dict[str, Any]:
    ticker = request.input_data()["ticker"].upper()
    f = fundamentals(ticker)
    claims = [
        {
            "statement": f"At {f['forward_pe']:.0f}x forward earnings, {ticker} prices in "
            f"more than its {f['growth']:.0f}% growth.",
            "evidence": _evidence(
                ticker, f"forward P/E {f['forward_pe']:.0f}x, growth {f['growth']:.0f}%"
            ),
        },
        {
            "statement": f"Leverage of {f['net_debt_ebitda']:.1f}x net debt/EBITDA "
            "limits room to manoeuvre in a downturn.",
            "evidence": _evidence(ticker, f"net debt/EBITDA {f['net_debt_ebitda']:.1f}x"),
        },
        {
            "statement": f"The top customer is {f['top_customer']:.0f}% of revenue: "
            "one lost contract moves the year.",
            "evidence": _evidence(ticker, f"top customer {f['top_customer']:.0f}% of revenue"),
        },
    ]
    risks = [
        f"Valuation: {f['forward_pe']:.0f}x forward earnings leaves little room for a miss.",
        "A beat-and-raise quarter could squeeze short positions.",
    ]
    confidence = min(0.9, 0.35 + f["forward_pe"] / 100 + f["net_debt_ebitda"] / 20)
    return {"position": "bear", "claims": claims, "risks": risks, "confidence": confidence}


def conflict_fields(request: tm.ModelRequest) -> list[str]:
    """The fields the framework found in conflict, as data: ``request.context``
    carries the conflicts it detected (the values are stamped by the framework)."""
    context = request.context
    return [c.field for c in context.conflicts] if context is not None else []


def _without_provenance(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_provenance(v) for k, v in value.items() if k != "provenance"}
    if isinstance(value, list):
        return [_without_provenance(v) for v in value]
    return value


def _note(field: str, bull: dict[str, Any], bear: dict[str, Any]) -> str:
    if field == "position":
        return "Opposing theses by design: bull argues for owning the stock, bear against."
    if field == "confidence":
        b, r = bull["confidence"], bear["confidence"]
        surer = "bull" if b > r else "bear"
        return (
            f"bull {b:.2f} vs bear {r:.2f}: {surer} is surer of its case by {abs(b - r):.2f}; "
            "the two are not averaged."
        )
    if field == "claims":
        return (
            f"The sides argue from different evidence: bull leads with "
            f"'{bull['claims'][0]['statement']}', bear with '{bear['claims'][0]['statement']}'."
        )
    if field == "risks":
        shared = [r for r in bull["risks"] if r in bear["risks"]]
        only_bull = [r for r in bull["risks"] if r not in bear["risks"]]
        only_bear = [r for r in bear["risks"] if r not in bull["risks"]]
        return (
            f"{len(shared)} risk(s) shared; only bull flags {only_bull}, "
            f"only bear flags {only_bear}."
        )
    return f"bull and bear differ on {field}; left unresolved for the reader."


def offline_judge(request: tm.ModelRequest) -> dict[str, Any]:
    debate = _without_provenance(request.input_data())
    bull, bear = debate["bull"], debate["bear"]
    fields = conflict_fields(request)
    agreements = [f"Both flag: {r}" for r in bull["risks"] if r in bear["risks"]]
    summary = (
        f"bull ({bull['confidence']:.2f}) and bear ({bear['confidence']:.2f}) disagree on "
        f"{len(fields)} field(s): {', '.join(fields) or 'none'}. The disagreement is "
        "reported as is, not averaged into a middle view."
    )
    recommendation = (
        f"No side picked. Weigh bull's strongest claim ('{bull['claims'][0]['statement']}') "
        f"against bear's ('{bear['claims'][0]['statement']}') before sizing a position."
    )
    return {
        "summary": summary,
        "agreements": agreements,
        "conflict_notes": {field: _note(field, bull, bear) for field in fields},
        "recommendation": recommendation,
    }


# -- the flow -------------------------------------------------------------------------

bull = tm.Agent(
    "bull",
    version="1.2.0",
    input=Task,
    output=AgentVerdict,
    model=model_from_env(tm.ScriptedModel(offline_bull, name="gpt-4o-mini")),
    instructions=(
        "Argue the bull case for the ticker. Give three concrete claims, each with the "
        "evidence it rests on, the risks to your own case, and a calibrated confidence."
    ),
)
bear = tm.Agent(
    "bear",
    version="1.0.3",
    input=Task,
    output=AgentVerdict,
    model=model_from_env(tm.ScriptedModel(offline_bear, name="gpt-4o-mini")),
    instructions=(
        "Argue the bear case for the ticker. Give three concrete claims, each with the "
        "evidence it rests on, the risks to your own case, and a calibrated confidence."
    ),
)
judge = tm.Agent(
    "synthesizer",
    version="2.0.0",
    input=Debate,
    output=tm.SynthesizedReport,
    model=model_from_env(tm.ScriptedModel(offline_judge, name="gpt-4o")),
    instructions=(
        "Synthesize the bull and bear verdicts. Surface every conflict with a note on what "
        "it turns on; list what both sides agree on. Do not decide who is right."
    ),
)

flow = tm.parallel(  # contracts are checked here
    bull=bull,
    bear=bear,
    merge=judge,
    name="debate",
    # two confidences within 0.05 of each other are not a disagreement
    compare={"confidence": tm.Compare(tolerance=0.05)},
)

example_input = Task(ticker="ACME")

intent = tm.Intent(
    goal="Decide whether ACME deserves deeper research for a long position",
    constraints=["every claim cites its evidence", "keep disagreements visible"],
    success_criteria=["each detected conflict is carried with a note"],
    audience="portfolio manager",
)


def main(argv: Sequence[str] = ()) -> None:
    task = Task(ticker=argv[0]) if argv else example_input
    run_intent = intent.model_copy(
        update={"goal": intent.goal.replace("ACME", task.ticker.upper())}
    )
    result = tm.run(flow, task, intent=run_intent)
    report: tm.SynthesizedReport = result.output
    print(f"== {task.ticker.upper()}: {report.summary}")
    for conflict in report.conflicts:
        print(f"  conflict on {conflict.field}: {conflict.note}")
    for agreement in report.agreements:
        print(f"  agreement: {agreement}")
    print(f"  recommendation: {report.recommendation}")
    for node in result.trace.walk():
        if node.usage.model_calls:
            u = node.usage
            print(
                f"  {node.name:<12} {','.join(node.models):<12} "
                f"{u.input_tokens:>5} in {u.output_tokens:>5} out  ${u.cost_usd:.6f}"
            )
    u = result.usage
    print(f"usage: {u.model_calls} model calls, {u.input_tokens} in + {u.output_tokens} out")
    print(f"cost: ${result.cost_usd:.6f}  (run {result.run_id})")


if __name__ == "__main__":
    main(sys.argv[1:])
