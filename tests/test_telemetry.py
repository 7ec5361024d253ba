"""Exporting journaled runs as OpenTelemetry spans (GenAI semantic conventions)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.journal.base import Lease
from typedmesh.journal.events import Event
from typedmesh.journal.verify import blob_refs
from typedmesh.runtime.reducer import TraceReducer
from typedmesh.testing import crashed_copy

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from typedmesh.telemetry import export_reduced, export_run  # noqa: E402


class Task(BaseModel):
    ticker: str


class Verdict(BaseModel):
    position: str
    confidence: float


class Debate(BaseModel):
    bull: Verdict
    bear: Verdict


class Order(BaseModel):
    order_id: str


class Status(BaseModel):
    status: str


@tm.tool
def lookup(order_id: str) -> str:
    """Look up an order."""
    return f"order {order_id} shipped"


def mini(fn: object) -> tm.ScriptedModel:
    return tm.ScriptedModel(fn, name="gpt-4o-mini")  # type: ignore[arg-type]


def debate_flow() -> tm.Step[Task, tm.SynthesizedReport]:
    verdict = {"position": "long", "confidence": 0.7}
    bull = tm.Agent(
        "bull",
        version="1.2.0",
        deployment="eu-prod",
        input=Task,
        output=Verdict,
        model=mini(lambda r: verdict),
    )
    bear = tm.Agent(
        "bear", version="1.0.3", input=Task, output=Verdict, model=mini(lambda r: verdict)
    )
    judge = tm.Agent(
        "synthesizer",
        version="2.0.0",
        input=Debate,
        output=tm.SynthesizedReport,
        model=mini(lambda r: {"summary": "both long", "conflicts": []}),
    )
    return tm.parallel(bull=bull, bear=bear, merge=judge)


def support_agent() -> tm.Agent[Order, Status]:
    def respond(request: tm.ModelRequest) -> object:
        if not any(m.role == "tool" for m in request.messages):
            return {"tool_calls": [{"name": "lookup", "arguments": {"order_id": "42"}}]}
        return {"status": "shipped"}

    return tm.Agent(
        "support", version="3.1.0", input=Order, output=Status, model=mini(respond), tools=[lookup]
    )


def export(journal: tm.Journal, run_id: str) -> tuple[int, list[ReadableSpan]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    count = export_run(journal, run_id, tracer_provider=provider)
    return count, list(exporter.get_finished_spans())


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def parent_of(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> ReadableSpan | None:
    if span.parent is None:
        return None
    return next(s for s in spans if s.context.span_id == span.parent.span_id)


def ns(event: Event) -> int:
    from typedmesh.telemetry import _ns

    return _ns(event.ts)


def test_parallel_flow_exports_the_genai_span_tree() -> None:
    journal = tm.MemoryJournal()
    result = tm.run(debate_flow(), Task(ticker="ACME"), journal=journal)
    count, spans = export(journal, result.run_id)

    assert count == len(spans) == 8  # run, parallel, 3 agents, 3 model calls
    root = one(spans, "invoke_workflow parallel")
    assert root.parent is None
    assert attrs(root)["gen_ai.operation.name"] == "invoke_workflow"
    assert attrs(root)["gen_ai.workflow.name"] == "parallel"
    assert attrs(root)["typedmesh.run_id"] == result.run_id
    assert root.status.status_code is StatusCode.UNSET
    assert {s.context.trace_id for s in spans} == {int(result.run_id, 16)}

    parallel = one(spans, "parallel")
    assert parent_of(parallel, spans) is root
    assert "gen_ai.operation.name" not in attrs(parallel)
    assert attrs(parallel)["typedmesh.step.kind"] == "parallel"

    for agent, version in (("bull", "1.2.0"), ("bear", "1.0.3"), ("synthesizer", "2.0.0")):
        span = one(spans, f"invoke_agent {agent}")
        assert parent_of(span, spans) is parallel
        assert span.kind is SpanKind.INTERNAL
        assert attrs(span)["gen_ai.operation.name"] == "invoke_agent"
        assert attrs(span)["gen_ai.agent.name"] == agent
        assert attrs(span)["gen_ai.agent.version"] == version
        assert attrs(span)["typedmesh.step.path"] == f"parallel/{agent}"
    assert attrs(one(spans, "invoke_agent bull"))["typedmesh.agent.deployment"] == "eu-prod"
    assert attrs(one(spans, "invoke_agent bear"))["typedmesh.agent.deployment"] == "local"

    chats = by_name(spans, "chat gpt-4o-mini")
    assert len(chats) == 3
    for chat in chats:
        agent_span = parent_of(chat, spans)
        assert agent_span is not None and agent_span.name.startswith("invoke_agent ")
        path = attrs(agent_span)["typedmesh.step.path"]
        assert chat.kind is SpanKind.CLIENT
        assert attrs(chat)["gen_ai.operation.name"] == "chat"
        assert attrs(chat)["gen_ai.request.model"] == "gpt-4o-mini"
        assert attrs(chat)["gen_ai.response.model"] == "gpt-4o-mini"
        assert attrs(chat)["typedmesh.effect.key"] == f"{path}/model#0"
        assert attrs(chat)["typedmesh.step.path"] == path
    assert sum(attrs(c)["gen_ai.usage.input_tokens"] for c in chats) == result.usage.input_tokens
    assert sum(attrs(c)["gen_ai.usage.output_tokens"] for c in chats) == (
        result.usage.output_tokens
    )
    assert attrs(root)["typedmesh.usage.input_tokens"] == result.usage.input_tokens


def test_span_times_and_ids_come_from_the_journal() -> None:
    journal = tm.MemoryJournal()
    result = tm.run(debate_flow(), Task(ticker="ACME"), journal=journal)
    events = journal.read(result.run_id)
    _, spans = export(journal, result.run_id)

    root = one(spans, "invoke_workflow parallel")
    assert root.start_time == ns(events[0]) and root.end_time == ns(events[-1])
    started = next(e for e in events if e.type == "step.started" and e.path == "parallel/bear")
    ended = next(e for e in events if e.type == "step.completed" and e.path == "parallel/bear")
    bear = one(spans, "invoke_agent bear")
    assert (bear.start_time, bear.end_time) == (ns(started), ns(ended))
    assert bear.context.span_id == int(started.span_id or "", 16)
    request = next(
        e for e in events if e.type == "model.request" and e.key == "parallel/bear/model#0"
    )
    response = next(e for e in events if e.type == "model.response" and e.key == request.key)
    chat = next(s for s in spans if attrs(s).get("typedmesh.effect.key") == request.key)
    assert (chat.start_time, chat.end_time) == (ns(request), ns(response))
    for span in spans:
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time <= span.end_time

    # exporting again gives the same trace, span for span
    _, again = export(journal, result.run_id)
    assert sorted((s.name, s.context.span_id) for s in again) == sorted(
        (s.name, s.context.span_id) for s in spans
    )


def test_tool_call_becomes_an_execute_tool_span() -> None:
    journal = tm.MemoryJournal()
    result = tm.run(support_agent(), Order(order_id="42"), journal=journal)
    count, spans = export(journal, result.run_id)

    assert count == len(spans) == 5  # run, agent, two model calls, one tool call
    agent = one(spans, "invoke_agent support")
    assert parent_of(agent, spans) is one(spans, "invoke_workflow support")
    tool = one(spans, "execute_tool lookup")
    assert parent_of(tool, spans) is agent
    assert tool.kind is SpanKind.INTERNAL
    assert tool.status.status_code is StatusCode.UNSET
    assert attrs(tool)["gen_ai.operation.name"] == "execute_tool"
    assert attrs(tool)["gen_ai.tool.name"] == "lookup"
    assert attrs(tool)["gen_ai.tool.type"] == "function"
    assert attrs(tool)["gen_ai.tool.call.id"] == "support/tool#0"
    assert attrs(tool)["typedmesh.effect.key"] == "support/tool#0"
    assert attrs(tool)["typedmesh.tool.idempotent"] is True
    assert len(str(attrs(tool)["typedmesh.tool.idempotency_key"])) == 32

    chats = sorted(by_name(spans, "chat gpt-4o-mini"), key=lambda s: s.start_time or 0)
    assert [attrs(c)["typedmesh.effect.key"] for c in chats] == [
        "support/model#0",
        "support/model#1",
    ]
    assert attrs(chats[0])["typedmesh.response.tool_calls"] == ("lookup",)
    times = [chats[0].end_time, tool.start_time, tool.end_time, chats[1].start_time]
    assert times == sorted(t or 0 for t in times)
    assert sum(attrs(c)["gen_ai.usage.input_tokens"] for c in chats) == result.usage.input_tokens


@tm.tool
def explode(order_id: str) -> str:
    """A tool that fails."""
    raise tm.ToolError(f"warehouse down for {order_id}", tool="explode")


@tm.tool(requires={"orders:refund"}, idempotent=False)
def refund(order_id: str) -> str:
    """Refund an order."""
    return "refunded"


def test_failed_and_denied_tool_calls() -> None:
    def respond(request: tm.ModelRequest) -> object:
        if not any(m.role == "tool" for m in request.messages):
            calls = [
                {"name": "explode", "arguments": {"order_id": "7"}},
                {"name": "refund", "arguments": {"order_id": "7"}},
            ]
            return {"tool_calls": calls}
        return {"status": "escalated"}

    agent = tm.Agent(
        "support",
        input=Order,
        output=Status,
        model=mini(respond),
        tools=[explode, refund],
        withheld_scopes={"orders:refund"},
    )
    journal = tm.MemoryJournal()
    result = tm.run(agent, Order(order_id="7"), journal=journal)
    _, spans = export(journal, result.run_id)

    failed = one(spans, "execute_tool explode")
    assert failed.status.status_code is StatusCode.ERROR
    assert attrs(failed)["error.type"] == "ToolError"
    assert "warehouse down for 7" in (failed.status.description or "")
    # a denied call runs nothing: no tool span, an event on the agent's span
    assert by_name(spans, "execute_tool refund") == []
    agent_span = one(spans, "invoke_agent support")
    denied = [e for e in agent_span.events if e.name == "tool.denied"]
    assert len(denied) == 1
    assert dict(denied[0].attributes or {})["tool"] == "refund"
    assert dict(denied[0].attributes or {})["missing"] == ("orders:refund",)
    # the agent recovered: the step and the run are fine
    assert agent_span.status.status_code is StatusCode.UNSET
    assert one(spans, "invoke_workflow support").status.status_code is StatusCode.UNSET


def test_failed_run_marks_the_failing_step_and_the_run_as_errors() -> None:
    broken = tm.Agent(
        "broken",
        version="0.2.0",
        input=Task,
        output=Verdict,
        model=mini(lambda r: "this is not json"),
        output_retries=1,
    )
    journal = tm.MemoryJournal()
    with pytest.raises(tm.OutputValidationError) as caught:
        tm.run(broken, Task(ticker="ACME"), journal=journal)
    run_id = caught.value.run_id
    assert run_id is not None
    _, spans = export(journal, run_id)

    step = one(spans, "invoke_agent broken")
    assert step.status.status_code is StatusCode.ERROR
    assert "invalid Verdict output" in (step.status.description or "")
    assert attrs(step)["error.type"] == "OutputValidationError"
    assert attrs(step)["typedmesh.status"] == "failed"
    assert [e.name for e in step.events] == ["output.invalid", "output.invalid", "exception"]
    assert dict(step.events[0].attributes or {})["attempt"] == 1
    assert dict(step.events[-1].attributes or {}) == {
        "exception.type": "OutputValidationError",
        "exception.message": step.status.description,
    }

    root = one(spans, "invoke_workflow broken")
    assert root.status.status_code is StatusCode.ERROR
    assert attrs(root)["error.type"] == "OutputValidationError"
    assert attrs(root)["typedmesh.error.step_path"] == "broken"
    # the model calls themselves succeeded: their answers failed the contract
    chats = by_name(spans, "chat gpt-4o-mini")
    assert len(chats) == 2
    assert all(c.status.status_code is StatusCode.UNSET for c in chats)


def test_model_error_sets_error_type_on_the_chat_span() -> None:
    failing = tm.Agent(
        "flaky", input=Task, output=Verdict, model=mini([tm.errors.ModelError("provider down")])
    )
    journal = tm.MemoryJournal()
    with pytest.raises(tm.ModelError) as caught:
        tm.run(failing, Task(ticker="ACME"), journal=journal)
    _, spans = export(journal, caught.value.run_id or "")

    chat = one(spans, "chat gpt-4o-mini")  # no response, but the request names the model
    assert attrs(chat)["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs(chat)["gen_ai.provider.name"] == "offline"
    assert chat.status.status_code is StatusCode.ERROR
    assert attrs(chat)["error.type"] == "ModelError"
    assert attrs(chat)["typedmesh.model.transient"] is False
    assert one(spans, "invoke_agent flaky").status.status_code is StatusCode.ERROR


def test_resumed_run_gives_the_restarted_step_a_second_span() -> None:
    journal = tm.MemoryJournal()
    first = tm.run(support_agent(), Order(order_id="42"), journal=journal, run_id="order-42")
    events = journal.read(first.run_id)
    tool_done = next(e.seq for e in events if e.type == "tool.result")
    crashed = crashed_copy(journal, first.run_id, tool_done)
    tm.resume("order-42", support_agent(), journal=crashed)
    _, spans = export(crashed, "order-42")

    root = one(spans, "invoke_workflow support")
    assert attrs(root)["typedmesh.status"] == "ok"
    assert [e.name for e in root.events] == ["run.resumed"]
    first_try, second_try = sorted(
        by_name(spans, "invoke_agent support"), key=lambda s: s.start_time or 0
    )
    assert attrs(first_try)["typedmesh.status"] == "incomplete"
    assert attrs(second_try)["typedmesh.attempt"] == 1
    assert first_try.context.span_id != second_try.context.span_id
    assert parent_of(first_try, spans) is root and parent_of(second_try, spans) is root
    # the tool ran before the crash, under the first attempt; the resumed attempt
    # was served model#0 and the tool from the journal and called model#1 live
    assert parent_of(one(spans, "execute_tool lookup"), spans) is first_try
    keys = {
        attrs(s)["typedmesh.effect.key"]: parent_of(s, spans)
        for s in by_name(spans, "chat gpt-4o-mini")
    }
    assert keys == {"support/model#0": first_try, "support/model#1": second_try}
    assert len({s.context.span_id for s in spans}) == len(spans)
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}


def test_export_of_an_unknown_run_raises_run_not_found() -> None:
    with pytest.raises(tm.RunNotFound):
        export(tm.MemoryJournal(), "nope")


def test_missing_sdk_is_a_missing_extra_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(tm.errors.MissingExtraError) as caught:
        export_run(tm.MemoryJournal(), "any")
    assert caught.value.extra == "otel"
    assert "typedmesh[otel]" in str(caught.value)


def test_importing_typedmesh_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, typedmesh, typedmesh.telemetry\n"
        "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- one reducer: the spans of a live run are the spans of its journal -------------


@tm.tool
def annotated(order_id: str, ctx: tm.RunContext) -> str:
    """Look up an order, noting a long trail (stored as a blob in the journal)."""
    ctx.record("lookup.trail", order_id=order_id, trail=["hop"] * 400, source={"db": "orders"})
    ctx.now()
    return f"order {order_id} shipped"


def noting_agent() -> tm.Agent[Order, Status]:
    def respond(request: tm.ModelRequest) -> object:
        if not any(m.role == "tool" for m in request.messages):
            return {"tool_calls": [{"name": "annotated", "arguments": {"order_id": "42"}}]}
        return {"status": "shipped"}

    return tm.Agent("support", input=Order, output=Status, model=mini(respond), tools=[annotated])


def exported(export: Any, *args: Any) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    export(*args, tracer_provider=provider)
    return list(exporter.get_finished_spans())


def span_tree(spans: Sequence[ReadableSpan]) -> list[tuple[Any, ...]]:
    """Everything an exported span says, ids and parents included, in a stable order."""
    return sorted(
        (
            s.name,
            s.context.span_id,
            s.context.trace_id,
            s.parent.span_id if s.parent is not None else None,
            s.kind.value,
            s.start_time,
            s.end_time,
            s.status.status_code.value,
            s.status.description,
            sorted(attrs(s).items()),
            [(e.name, e.timestamp, sorted(dict(e.attributes or {}).items())) for e in s.events],
        )
        for s in spans
    )


def failing_agent() -> tm.Agent[Task, Verdict]:
    return tm.Agent(
        "broken", input=Task, output=Verdict, model=mini(lambda r: "no json"), output_retries=1
    )


@pytest.mark.parametrize(
    ("flow", "given"),
    [
        (debate_flow, Task(ticker="ACME")),
        (support_agent, Order(order_id="42")),
        (noting_agent, Order(order_id="42")),
        (failing_agent, Task(ticker="ACME")),
    ],
    ids=["parallel", "tool", "records", "failed"],
)
def test_the_span_tree_of_a_live_run_equals_the_one_from_its_journal(
    flow: Any, given: BaseModel
) -> None:
    journal = tm.MemoryJournal()
    live = TraceReducer()  # fed each event as the run makes it, as the run's own reducer is
    try:
        run_id = tm.run(flow(), given, journal=journal, subscribers=[live]).run_id
    except tm.RunError as exc:
        run_id = exc.run_id or ""
    from_journal = exported(export_run, journal, run_id)
    assert from_journal and span_tree(exported(export_reduced, live)) == span_tree(from_journal)
    if flow is noting_agent:  # the long trail is its blob's digest in both
        agent_span = one(from_journal, "invoke_agent support")
        trail = next(e for e in agent_span.events if e.name == "lookup.trail")
        assert str(dict(trail.attributes or {})["trail"]).startswith("sha256:")
        assert [e.name for e in agent_span.events] == ["lookup.trail", "clock"]


class Tapped(tm.MemoryJournal):
    """Keeps the events a run appends: the very (live) events its reducer was fed."""

    def __init__(self) -> None:
        super().__init__()
        self.tapped: list[Event] = []

    def append(
        self, lease: Lease, events: Sequence[Event], blobs: Mapping[str, bytes], **options: Any
    ) -> Lease:
        self.tapped.extend(events)
        return super().append(lease, events, blobs, **options)


def test_the_span_tree_of_a_resumed_run_equals_the_one_from_its_journal() -> None:
    journal = tm.MemoryJournal()
    tm.run(support_agent(), Order(order_id="42"), journal=journal, run_id="order-42")
    cut = next(e.seq for e in journal.read("order-42") if e.type == "tool.result")
    events = journal.read("order-42")[: cut + 1]
    refs = {d for e in events for digests in blob_refs(e).values() for d in digests}
    crashed = Tapped()
    crashed.import_run(events, {d: journal.blob(d) for d in refs})  # crashed after the tool
    crashed.tapped.clear()
    tm.resume("order-42", support_agent(), journal=crashed)
    # what resume does: the journal's events, then the run's own as it makes them
    live = TraceReducer(crashed)
    for event in events:
        live.add(event)
    for event in crashed.tapped:
        live.add(event)
    from_journal = exported(export_run, crashed, "order-42")
    assert len(by_name(from_journal, "invoke_agent support")) == 2
    assert span_tree(exported(export_reduced, live)) == span_tree(from_journal)
