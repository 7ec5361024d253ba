"""Batch reviews: one flow over a JSONL file of product reviews, resumable.

Each review is read by an agent (``reader``: sentiment, topics, whether the
customer needs an answer); a plain step (``triage``) opens a support ticket
through an idempotent tool for the unhappy ones. ``tm.batch`` runs every line
as its own journaled run, four at a time, under one shared budget, and
reports the success rate (with a 95% confidence interval), tokens and cost
per agent. The file holds one malformed line on purpose: it is reported with
its line number and skipped, the rest run.

Kill it halfway and run the same command again with the same batch id: the
finished reviews come from the journal, the rest resume or start, and no
ticket is opened twice.

    python examples/batch_reviews.py
    python examples/batch_reviews.py --batch-id reviews-1 --max-cost 0.05
    typedmesh batch examples/batch_reviews.py:flow --inputs examples/batch_reviews.jsonl \\
        --batch-id reviews-1 --concurrency 4
    TYPEDMESH_MODEL=openai:gpt-4o-mini typedmesh batch examples/batch_reviews.py:flow \\
        --inputs examples/batch_reviews.jsonl --provider-batch   # half price, within hours
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

import typedmesh as tm
from typedmesh.batch import BatchReport, batch
from typedmesh.journal import DEFAULT_JOURNAL
from typedmesh.models import model_from_env

INPUTS = Path(__file__).with_suffix(".jsonl")

# -- contracts ------------------------------------------------------------------------

Sentiment = Literal["positive", "negative", "mixed"]


class Review(BaseModel):
    """One line of the input file."""

    review_id: str = Field(min_length=1)
    product: str
    stars: int = Field(ge=1, le=5)
    text: str


class Reading(BaseModel):
    """What the reader makes of a review."""

    review_id: str
    sentiment: Sentiment
    topics: list[str]
    needs_reply: bool


class Triaged(BaseModel):
    """The flow's output: the reading, and the ticket opened for it, if any."""

    review_id: str
    sentiment: Sentiment
    topics: list[str]
    ticket: str | None = None


# -- the offline model (reads only the input, never the prompt's prose) ------------------

_TOPICS = {
    "battery": ("battery", "charge", "charging"),
    "shipping": ("arrived", "delivery", "shipping", "box"),
    "quality": ("broke", "cracked", "cheap", "flimsy", "sturdy", "solid"),
    "price": ("price", "expensive", "worth", "value"),
    "support": ("support", "refund", "return"),
}


def offline_reader(request: tm.ModelRequest) -> dict[str, Any]:
    review = request.input_data()
    text = str(review["text"]).lower()
    stars = int(review["stars"])
    topics = [topic for topic, words in _TOPICS.items() if any(w in text for w in words)]
    sentiment: Sentiment = "positive" if stars >= 4 else "negative" if stars <= 2 else "mixed"
    return {
        "review_id": review["review_id"],
        "sentiment": sentiment,
        "topics": topics or ["general"],
        "needs_reply": sentiment == "negative" or "refund" in text,
    }


reader = tm.Agent(
    "reader",
    version="1.0.0",
    input=Review,
    output=Reading,
    instructions="Read the product review. Say its sentiment, its topics (one word each) "
    "and whether the customer needs an answer from support.",
    model=model_from_env(tm.ScriptedModel(offline_reader, name="gpt-4o-mini")),
)

# -- the side effect: a support ticket, once per review ------------------------------------

TICKETS: dict[str, str] = {}
"""Opened tickets by idempotency key: the helpdesk's own dedupe, as a real API has."""


@tm.tool(requires={"helpdesk:write"})
def open_ticket(review_id: str, topics: list[str], ctx: tm.RunContext) -> str:
    """Open a support ticket for a review (idempotent: one per call, whatever the retries)."""
    key = ctx.idempotency_key or review_id
    if key not in TICKETS:
        TICKETS[key] = f"T-{review_id}-{'-'.join(topics)}"
    return TICKETS[key]


@tm.step(name="triage", scopes={"helpdesk:write"})
async def triage(reading: Reading, ctx: tm.RunContext) -> Triaged:
    ticket = None
    if reading.needs_reply:
        ticket = await ctx.call_tool(
            open_ticket, review_id=reading.review_id, topics=reading.topics
        )
    return Triaged(
        review_id=reading.review_id,
        sentiment=reading.sentiment,
        topics=reading.topics,
        ticket=ticket,
    )


flow = tm.sequential(reader, triage, name="batch_reviews")
example_input = Review(
    review_id="R-1",
    product="Aurora 27 monitor",
    stars=2,
    text="Arrived with a cracked corner and support never answered. I want a refund.",
)


def print_report(report: BatchReport) -> None:
    counts = report.counts
    print(
        f"batch {report.batch_id}: {len(report.items)} reviews, ok {counts['ok']}, "
        f"failed {counts['failed']}, malformed {counts['malformed']}, "
        f"waiting {counts['waiting']}, skipped {counts['skipped']}"
    )
    for item in report.items:
        if item.status == "ok":
            out = item.output
            ticket = f"  ticket {out['ticket']}" if out.get("ticket") else ""
            print(f"  {out['review_id']}: {out['sentiment']:<8} {', '.join(out['topics'])}{ticket}")
        else:
            print(f"  line {item.line}: {item.status}: {item.error or item.waiting}")
    interval = report.confidence_interval
    if report.success_rate is not None and interval is not None:
        print(
            f"success rate: {report.success_rate:.0%} "
            f"(95% CI {interval[0]:.0%} to {interval[1]:.0%})"
        )
    for agent, used in sorted(report.by_agent.items()):
        print(f"  {agent}: {used.model_calls} calls, ${used.cost_usd:.6f}")
    u = report.usage
    print(
        f"usage: {u.model_calls} model calls, {u.tool_calls} tool calls, "
        f"{u.input_tokens} in + {u.output_tokens} out"
    )
    print(f"cost: ${u.cost_usd:.6f}  (batch {report.batch_id}: run it again with --batch-id)")


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--inputs", default=str(INPUTS), help="a JSONL file of reviews")
    parser.add_argument("--batch-id", default=None, help="the same id resumes the batch")
    parser.add_argument("--journal", default=DEFAULT_JOURNAL)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-cost", type=float, default=None, help="shared budget in USD")
    parser.add_argument("--provider-batch", action="store_true")
    args = parser.parse_args(argv)
    report = batch(
        flow,
        args.inputs,
        batch_id=args.batch_id,
        journal=args.journal,
        concurrency=args.concurrency,
        budget=None if args.max_cost is None else tm.Budget(max_cost_usd=args.max_cost),
        provider_batch=args.provider_batch,
        target=f"{Path(__file__).resolve()}:flow",
    )
    print_report(report)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
