"""tm.stream: the run's events live, token deltas, a bounded buffer, and how a stream ends.

The models here are offline and stream through ``emit_delta``, as a custom
model would; the SDK providers against fake servers are in
``tests/models/test_streaming.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import typedmesh as tm
from doc_examples import run_doc_example
from typedmesh.errors import TransientModelError
from typedmesh.models.base import ModelRequest, ModelResponse, Usage
from typedmesh.models.streaming import emit_delta, listening
from typedmesh.runtime.stream import (
    Lagged,
    RunEvent,
    RunStream,
    StreamEvent,
    StreamSink,
    TokenDelta,
    stream,
)


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


class Talker:
    """Streams its answers (the last one repeats) in pieces through ``emit_delta``.

    ``hold`` is awaited after the first piece (to keep a call open);
    ``fail_first_after`` breaks the first call after that many pieces.
    """

    provider = "offline"

    def __init__(
        self,
        *answers: str,
        name: str = "talker",
        piece: int = 4,
        hold: Callable[[], Awaitable[None]] | None = None,
        fail_first_after: int | None = None,
    ) -> None:
        self.name = name
        self.answers = list(answers)
        self.piece = piece
        self.hold = hold
        self.fail_first_after = fail_first_after
        self.calls = 0

    async def generate(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        text = self.answers[min(self.calls, len(self.answers)) - 1]
        pieces = [text[i : i + self.piece] for i in range(0, len(text), self.piece)]
        for number, piece in enumerate(pieces):
            if self.calls == 1 and number == self.fail_first_after:
                raise TransientModelError("the stream broke", error_type="connection_error")
            emit_delta(piece)
            if number == 0 and self.hold is not None:
                await self.hold()
            await asyncio.sleep(0)
        return ModelResponse(
            content=text, usage=Usage(input_tokens=5, output_tokens=len(pieces)), model=self.name
        )


def answer(text: str) -> str:
    return json.dumps({"answer": text})


def agent(model: Any, name: str = "answerer", **options: Any) -> tm.Agent[Question, Answer]:
    return tm.Agent(name, input=Question, output=Answer, model=model, **options)


async def collect(items: RunStream[Any]) -> list[StreamEvent]:
    return [item async for item in items]


def events_of(items: Sequence[StreamEvent]) -> list[RunEvent]:
    return [i for i in items if isinstance(i, RunEvent)]


def deltas_of(items: Sequence[StreamEvent]) -> list[TokenDelta]:
    return [i for i in items if isinstance(i, TokenDelta)]


# -- what a stream yields -----------------------------------------------------------


async def test_the_stream_is_the_journal_live_with_deltas_before_each_response(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "runs.db"
    items = stream(agent(Talker(answer("forty-two"))), {"text": "q"}, journal=journal, run_id="s1")
    seen = await collect(items)
    result = await items

    assert result.output == Answer(answer="forty-two") and result.run_id == "s1"
    with tm.SQLiteJournal(journal) as store:
        recorded = store.read("s1")
    streamed = [i.event for i in events_of(seen)]
    assert [(e.seq, e.type, e.hash) for e in streamed] == [
        (e.seq, e.type, e.hash) for e in recorded
    ]  # every journal event, in order, chained as stored
    kinds = [i.type if isinstance(i, RunEvent) else i.kind for i in seen]
    assert kinds[:3] == ["run.started", "step.started", "model.request"]
    first, last = kinds.index("delta"), len(kinds) - 1 - kinds[::-1].index("delta")
    assert kinds[first - 1] == "model.request" and kinds[last + 1] == "model.response"
    deltas = deltas_of(seen)
    assert "".join(d.text for d in deltas) == answer("forty-two")
    assert {(d.path, d.key, d.model) for d in deltas} == {
        ("answerer", "answerer/model#0", "talker")
    }
    assert [d.index for d in deltas] == list(range(len(deltas)))
    assert kinds[-1] == "run.finished" and items.done and items.dropped == 0


async def test_deltas_arrive_while_the_call_is_still_running() -> None:
    seen_delta = asyncio.Event()

    async def hold() -> None:  # the call goes on only once the consumer saw a delta
        await asyncio.wait_for(seen_delta.wait(), timeout=5)

    items = stream(agent(Talker(answer("live"), hold=hold)), {"text": "q"})
    types: list[str] = []
    async for item in items:
        if isinstance(item, TokenDelta) and not seen_delta.is_set():
            assert "model.response" not in types and not items.done
            seen_delta.set()
        types.append(item.type if isinstance(item, RunEvent) else item.kind)
    assert (await items).output.answer == "live"


async def test_the_structured_output_is_validated_at_the_end_and_retried() -> None:
    model = Talker('{"answer": 7}', answer("fixed"))  # a wrong type first, streamed all the same
    items = stream(agent(model), {"text": "q"})
    seen = await collect(items)
    types = [i.type for i in events_of(seen)]
    assert "output.invalid" in types and types.count("model.response") == 2
    keys = [d.key for d in deltas_of(seen)]
    assert keys[0] == "answerer/model#0" and keys[-1] == "answerer/model#1"
    assert (await items).output == Answer(answer="fixed")


async def test_an_output_that_never_validates_ends_the_stream_with_the_typed_error() -> None:
    items = stream(agent(Talker("not json"), output_retries=1), {"text": "q"}, run_id="bad")
    seen: list[StreamEvent] = []
    with pytest.raises(tm.OutputValidationError) as failed:
        async for item in items:
            seen.append(item)
    assert failed.value.run_id == "bad"
    assert events_of(seen)[-1].type == "run.failed"
    assert events_of(seen)[-1].payload["type"] == "OutputValidationError"
    with pytest.raises(tm.OutputValidationError):  # awaiting it says the same
        await items


async def test_a_failing_step_ends_the_stream_with_its_error() -> None:
    @tm.step(name="boom")
    async def boom(a: Answer) -> Answer:
        raise ValueError("no such thing")

    flow = tm.sequential(agent(Talker(answer("x"))), boom, name="flow")
    items = stream(flow, {"text": "q"})
    seen: list[StreamEvent] = []
    with pytest.raises(tm.StepFailed) as failed:
        async for item in items:
            seen.append(item)
    assert failed.value.step_path == "flow/boom"
    types = [e.type for e in events_of(seen)]
    assert types[-3:] == ["step.failed", "step.failed", "run.failed"]  # boom, then the flow
    assert events_of(seen)[-1].payload["step_path"] == "flow/boom"
    assert deltas_of(seen), "the agent's deltas came before the failure"


async def test_a_bad_input_ends_the_stream_before_any_event() -> None:
    items = stream(agent(Talker(answer("x"))), {"nope": 1})
    with pytest.raises(tm.InputValidationError):
        await collect(items)


class StreamSignal(tm.EffectKind):
    """A test-only kind that waits for a result recorded from outside."""

    name: ClassVar[str] = "stream_test_signal"
    may_wait: ClassVar[bool] = True
    commit_result: ClassVar[bool] = True


SIGNAL = tm.register_kind(StreamSignal())


@tm.step(name="gate")
async def gate(a: Answer, ctx: tm.RunContext) -> Answer:
    async def ask() -> Any:
        return tm.PENDING

    verdict = await ctx.perform(SIGNAL, {"answer": a.answer}, ask)
    return Answer(answer=f"{a.answer}:{verdict}")


async def test_a_waiting_run_ends_the_stream_with_run_waiting(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    flow = tm.sequential(agent(Talker(answer("ship"))), gate, name="approve")
    items = stream(flow, {"text": "q"}, journal=journal, run_id="w")
    seen: list[StreamEvent] = []
    with pytest.raises(tm.RunWaiting) as waiting:
        async for item in items:
            seen.append(item)
    assert waiting.value.waiting == ["approve/gate/stream_test_signal#0"]
    assert events_of(seen)[-1].type == "run.suspended"
    assert tm.waiting_effects("w", journal=journal) == waiting.value.waiting


# -- a slow consumer ----------------------------------------------------------------


async def test_a_slow_consumer_does_not_slow_the_run_and_is_told_what_it_missed() -> None:
    calls, per_call = 10, 40
    text = answer("x" * (per_call * 4 - 14))  # 40 pieces of 4 characters per call
    chain: list[tm.Step[Any, Any]] = []
    for n in range(calls):
        if n:
            chain.append(relay(n))
        chain.append(agent(Talker(text), name=f"a{n}"))
    flow = tm.sequential(*chain, name="relay")

    items = stream(flow, {"text": "q"}, max_deltas=8)
    started = time.monotonic()
    run_ended: list[float] = []

    async def watch() -> None:
        await items.result()
        run_ended.append(time.monotonic() - started)

    watcher = asyncio.ensure_future(watch())
    seen: list[StreamEvent] = []
    async for item in items:
        seen.append(item)
        await asyncio.sleep(0.01)  # a slow consumer: 10 ms per item
    consumer_took = time.monotonic() - started
    await watcher

    events, deltas = events_of(seen), deltas_of(seen)
    lagged = [i for i in seen if isinstance(i, Lagged)]
    total = sum(len([text[i : i + 4] for i in range(0, len(text), 4)]) for _ in range(calls))
    assert run_ended[0] < 1.0, "the run did not wait for its consumer"
    assert consumer_took > run_ended[0]
    assert events[-1].type == "run.finished"
    assert len([e for e in events if e.type == "model.response"]) == calls  # no event dropped
    assert [e.seq for e in events] == list(range(len(events)))
    assert lagged and sum(g.dropped for g in lagged) == total - len(deltas) == items.dropped
    assert all(g.keys and g.chars > 0 for g in lagged)
    assert len(deltas) < total
    # what was missed is in the responses: the marker names calls whose response follows it
    for gap in lagged:
        after = seen[seen.index(gap) :]
        for key in gap.keys:
            assert any(isinstance(e, RunEvent) and e.key == key for e in after)


async def test_max_deltas_zero_streams_nothing_and_keeps_every_event() -> None:
    items = stream(agent(Talker(answer("quiet"))), {"text": "q"}, max_deltas=0)
    seen = await collect(items)
    assert deltas_of(seen) == [] and not any(isinstance(i, Lagged) for i in seen)
    assert events_of(seen)[-1].type == "run.finished"


def test_max_deltas_must_not_be_negative() -> None:
    with pytest.raises(tm.ConfigurationError, match="max_deltas"):
        stream(agent(Talker(answer("x"))), {"text": "q"}, max_deltas=-1)


# -- a consumer that leaves early ---------------------------------------------------


async def _status(journal: Path, run_id: str, until: float = 5.0) -> str:
    deadline = time.monotonic() + until
    while True:
        with tm.SQLiteJournal(journal) as store:
            [info] = [r for r in store.runs() if r.run_id == run_id]
        if info.status != "running" or time.monotonic() > deadline:
            return info.status
        await asyncio.sleep(0.02)


async def test_breaking_out_leaves_the_run_running_to_completion(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    model = Talker(answer("one"), answer("two"))
    flow = tm.sequential(agent(model, name="first"), _again, agent(model, name="second"))
    async for item in stream(flow, {"text": "q"}, journal=journal, run_id="left"):
        assert isinstance(item, RunEvent) and item.type == "run.started"
        break  # the consumer goes away, dropping the stream
    assert await _status(journal, "left") == "finished"
    assert model.calls == 2
    with tm.SQLiteJournal(journal) as store:
        assert store.read("left")[-1].type == "run.finished"


@tm.step(name="again")
async def _again(a: Answer) -> Question:
    return Question(text=a.answer)


def relay(n: int) -> tm.Step[Answer, Question]:
    @tm.step(name=f"again{n}")
    async def again(a: Answer) -> Question:
        return Question(text=a.answer)

    return again


async def test_leaving_an_async_with_block_early_waits_for_the_run(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    model = Talker(answer("one"), answer("two"))
    flow = tm.sequential(agent(model, name="first"), _again, agent(model, name="second"))
    async with stream(flow, {"text": "q"}, journal=journal, run_id="with") as items:
        async for item in items:
            if isinstance(item, TokenDelta):
                break
        assert not items.done
    assert items.done and model.calls == 2
    assert (await items).output == Answer(answer="two")
    with tm.SQLiteJournal(journal) as store:
        assert store.read("with")[-1].type == "run.finished"


async def test_leaving_early_still_raises_the_runs_error_when_the_block_ends() -> None:
    with pytest.raises(tm.OutputValidationError):
        async with stream(agent(Talker("nope"), output_retries=0), {"text": "q"}) as items:
            async for _ in items:
                break


async def test_a_consumer_that_raises_leaves_the_run_running(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    model = Talker(answer("one"), answer("two"))
    flow = tm.sequential(agent(model, name="first"), _again, agent(model, name="second"))
    with pytest.raises(KeyError):
        async with stream(flow, {"text": "q"}, journal=journal, run_id="oops") as items:
            async for _ in items:
                raise KeyError("the consumer's own bug")
    assert await _status(journal, "oops") == "finished"


async def test_cancel_stops_the_run_on_purpose(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    release = asyncio.Event()

    async def hold() -> None:
        await release.wait()

    items = stream(agent(Talker(answer("x"), hold=hold)), {"text": "q"}, journal=journal)
    async for item in items:
        if isinstance(item, TokenDelta):
            items.cancel()
    with pytest.raises(asyncio.CancelledError):
        await items
    with tm.SQLiteJournal(journal) as store:
        last = store.read(items.run_id)[-1]
    assert last.type == "run.failed" and last.payload["type"] == "CancelledError"


# -- where deltas go ----------------------------------------------------------------


class Both(BaseModel):
    left: Answer
    right: Answer


@tm.step(name="join")
async def join(both: Both) -> tm.SynthesizedReport:
    return tm.SynthesizedReport(summary=both.left.answer + "+" + both.right.answer)


async def test_parallel_branches_each_get_their_own_deltas() -> None:
    left = agent(Talker(answer("L" * 30), name="m-left"), name="left")
    right = agent(Talker(answer("R" * 30), name="m-right"), name="right")
    flow = tm.parallel(left=left, right=right, merge=join, name="both")
    seen = await collect(stream(flow, {"text": "q"}))
    by_key: dict[str, str] = {}
    for delta in deltas_of(seen):
        by_key[delta.key] = by_key.get(delta.key, "") + delta.text
        assert delta.model == ("m-left" if delta.path.endswith("left") else "m-right")
    assert sorted(by_key.values()) == [answer("L" * 30), answer("R" * 30)]
    paths = {d.path for d in deltas_of(seen)}
    assert paths == {"both/left", "both/right"}
    kinds = [type(i).__name__ for i in seen]
    assert kinds.index("TokenDelta") < len(kinds) - 1


async def test_a_retried_call_streams_each_attempt_under_its_own_key() -> None:
    model = Talker(answer("second try"), fail_first_after=2)
    retry = tm.RetryPolicy(max_attempts=2, backoff=0.0)
    items = stream(agent(model, retry=retry), {"text": "q"})
    seen = await collect(items)
    keys = [d.key for d in deltas_of(seen)]
    assert keys[:2] == ["answerer/model#0"] * 2
    assert set(keys[2:]) == {"answerer/model#0.2"}
    types = [e.type for e in events_of(seen)]
    assert types.index("model.error") < types.index("model.retry") < types.index("model.response")
    assert (await items).output.answer == "second try"


async def test_a_stream_sink_in_subscribers_hears_deltas_and_cannot_break_the_run() -> None:
    heard: list[str] = []
    events: list[str] = []

    def on_delta(delta: TokenDelta) -> None:
        heard.append(delta.text)
        raise RuntimeError("a broken consumer")

    sink = StreamSink(on_event=lambda e: events.append(e.type), on_delta=on_delta)
    result = await tm.arun(agent(Talker(answer("fine"))), {"text": "q"}, subscribers=[sink])
    assert result.output.answer == "fine"
    assert "".join(heard) == answer("fine") and events[-1] == "run.finished"


async def test_two_streams_of_one_run_and_a_listener_around_it_all_hear_the_deltas() -> None:
    outer: list[str] = []
    mine: list[str] = []
    with listening(outer.append):
        items = stream(
            agent(Talker(answer("shared"))),
            {"text": "q"},
            subscribers=[StreamSink(on_delta=lambda d: mine.append(d.text))],
        )
        seen = await collect(items)
    text = answer("shared")
    assert "".join(d.text for d in deltas_of(seen)) == "".join(mine) == "".join(outer) == text


async def test_no_listener_is_left_behind_after_a_run() -> None:
    from typedmesh.models.streaming import delta_listener

    await tm.arun(
        agent(Talker(answer("x"))), {"text": "q"}, subscribers=[StreamSink(on_delta=print)]
    )
    assert delta_listener() is None


async def test_a_replay_is_exact_and_streams_nothing(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    model = Talker(answer("recorded"))
    flow = agent(model)
    items = stream(flow, {"text": "q"}, journal=journal, run_id="r")
    live = await collect(items)
    assert deltas_of(live)
    heard: list[str] = []
    with listening(heard.append):
        replayed = await tm.areplay("r", flow, journal=journal)
    assert replayed.output == Answer(answer="recorded") and model.calls == 1 and heard == []


def test_stream_needs_a_running_loop_only_when_it_starts() -> None:
    items = stream(agent(Talker(answer("x"))), {"text": "q"}, run_id="later")
    assert items.run_id == "later" and not items.done

    async def main() -> list[str]:
        return [i.type for i in events_of(await collect(items))]

    types = asyncio.run(main())
    assert types[0] == "run.started" and types[-1] == "run.finished"
    assert re.fullmatch(r"[0-9a-f]{32}", stream(agent(Talker("")), {"text": "q"}).run_id)


# -- docs/streaming.md ---------------------------------------------------------------


def test_the_docs_example_prints_what_the_docs_say(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_doc_example("streaming.md", capsys)
