"""tm.batch: one journaled run per input, resumable under the same batch id, one shared
budget, malformed lines reported and skipped, a report with a success rate."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.batch import (
    BatchInput,
    BatchProgress,
    abatch,
    batch,
    read_inputs,
    run_id_for,
    wilson_interval,
)
from typedmesh.models.base import Message, ModelRequest, ModelResponse
from typedmesh.models.offline import SloppyModel


class Review(BaseModel):
    text: str


class Verdict(BaseModel):
    sentiment: str


def answer(request: ModelRequest) -> Any:
    text = request.input_data()["text"]
    if "boom" in text:
        return "this is not JSON"
    return {"sentiment": "positive" if "good" in text else "negative"}


def classifier(respond: Callable[[ModelRequest], Any] = answer) -> tm.Agent[Review, Verdict]:
    return tm.Agent(
        "classifier",
        input=Review,
        output=Verdict,
        model=tm.ScriptedModel(respond, name="gpt-4o-mini"),
    )


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def model_of(agent: tm.Agent[Any, Any]) -> tm.ScriptedModel:
    model = agent.model
    assert isinstance(model, tm.ScriptedModel)
    return model


# -- running and reporting --------------------------------------------------------------


def test_every_input_is_its_own_journaled_run_with_a_deterministic_id(tmp_path: Path) -> None:
    agent = classifier()
    journal = tmp_path / "runs.db"
    report = batch(
        agent,
        [{"text": "good"}, Review(text="bad"), '{"text": "good again"}'],
        batch_id="b1",
        journal=journal,
    )
    assert [i.status for i in report.items] == ["ok", "ok", "ok"]
    assert [i.run_id for i in report.items] == ["b1-00000", "b1-00001", "b1-00002"]
    assert [i.output for i in report.items] == [
        {"sentiment": "positive"},
        {"sentiment": "negative"},
        {"sentiment": "positive"},
    ]
    assert all(i.action == "started" for i in report.items)
    assert run_id_for("b1", 2) == "b1-00002"
    with tm.SQLiteJournal(journal) as store:
        assert sorted(r.run_id for r in store.runs()) == ["b1-00000", "b1-00001", "b1-00002"]
        assert all(r.status == "finished" for r in store.runs())
        assert all(tm.verify_run(store, r.run_id).ok for r in store.runs())
    assert report.complete and report.success_rate == 1.0
    assert report.usage.model_calls == 3 and report.usage.cost_usd > 0
    assert report.by_agent["classifier@0.1.0"].model_calls == 3
    assert report.by_model["gpt-4o-mini"].model_calls == 3
    assert report.usage == sum((i.usage for i in report.items), tm.Usage())


def test_malformed_lines_are_reported_with_their_line_and_skipped(tmp_path: Path) -> None:
    inputs = write(
        tmp_path / "in.jsonl",
        '{"text": "good"}',
        "{not json",
        "",
        "[1, 2]",
        '{"txt": "no text field"}',
        '"a string"',
        '{"text": "bad"}',
    )
    (tmp_path / "in.jsonl").write_bytes(
        (tmp_path / "in.jsonl").read_bytes() + b'{"text": "\xff\xfe"}\n'
    )
    report = batch(classifier(), inputs, batch_id="m", journal=tmp_path / "runs.db")
    by_line = {i.line or 0: i for i in report.items}
    assert sorted(by_line) == [1, 2, 4, 5, 6, 7, 8]  # the blank line 3 is no item
    assert by_line[1].status == by_line[7].status == "ok"
    assert by_line[2].status == "malformed" and by_line[2].error_type == "InvalidJSON"
    assert by_line[2].error is not None and by_line[2].error.startswith("line 2: not valid JSON")
    assert by_line[4].error_type == "NotAnObject" and "an array" in str(by_line[4].error)
    assert by_line[5].error_type == "InputValidationError"
    assert "line 5" in str(by_line[5].error) and "text" in str(by_line[5].error)
    assert by_line[6].error_type == "NotAnObject" and "a string" in str(by_line[6].error)
    assert by_line[8].error_type == "InvalidJSON" and "UTF-8" in str(by_line[8].error)
    assert all(by_line[n].run_id is None for n in (2, 4, 5, 6, 8))
    assert report.counts == {"ok": 2, "failed": 0, "waiting": 0, "malformed": 5, "skipped": 0}
    assert report.success_rate == 1.0 and not report.complete
    # the item index counts every non-blank line, so fixing a line moves no run id
    assert by_line[7].run_id == "m-00005"


def test_read_inputs_refuses_a_missing_file_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(tm.ConfigurationError, match="no such inputs file"):
        read_inputs(tmp_path / "nope.jsonl")
    with pytest.raises(tm.ConfigurationError, match="is a directory"):
        read_inputs(tmp_path)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"text": "good"}\n')
    assert read_inputs(bom) == [BatchInput(index=0, value={"text": "good"}, line=1)]


def test_a_failed_item_is_reported_with_its_error_type_and_the_rest_finish(
    tmp_path: Path,
) -> None:
    report = batch(
        classifier(),
        [{"text": "good"}, {"text": "boom"}, {"text": "bad"}],
        batch_id="f",
        journal=tmp_path / "runs.db",
    )
    failed = report.of("failed")
    assert [i.index for i in failed] == [1]
    assert failed[0].error_type == "OutputValidationError"
    assert failed[0].usage.model_calls == 3  # billed re-asks count toward the report
    assert report.errors_by_type == {"OutputValidationError": 1}
    assert report.success_rate == pytest.approx(2 / 3)
    low, high = report.confidence_interval or (0, 0)
    assert low < 2 / 3 < high
    data = report.to_dict()
    assert (
        data["counts"]["failed"] == 1 and data["items"][1]["error_type"] == "OutputValidationError"
    )
    json.dumps(data)  # JSON-ready


def test_wilson_interval() -> None:
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(95, 100) or (0, 0)
    assert low == pytest.approx(0.8883, abs=1e-3) and high == pytest.approx(0.9785, abs=1e-3)
    low, high = wilson_interval(10, 10) or (0, 0)
    assert high == 1.0 and 0.69 < low < 0.73


# -- resuming under the same batch id ---------------------------------------------------


def test_running_a_batch_again_takes_finished_items_from_the_journal(tmp_path: Path) -> None:
    agent = classifier()
    journal = tmp_path / "runs.db"
    inputs = [{"text": "good"}, {"text": "bad"}]
    first = batch(agent, inputs, batch_id="again", journal=journal)
    calls = len(model_of(agent).calls)
    second = batch(agent, inputs, batch_id="again", journal=journal)
    assert len(model_of(agent).calls) == calls  # nothing ran again
    assert [i.action for i in second.items] == ["journaled", "journaled"]
    assert [i.output for i in second.items] == [i.output for i in first.items]
    assert second.usage == first.usage  # what the runs cost, from the journal
    with tm.SQLiteJournal(journal) as store:
        for item in second.items:
            events = [e.type for e in store.read(str(item.run_id))]
            assert events.count("run.finished") == 1 and "run.resumed" not in events


def test_a_failed_item_is_resumed_when_the_batch_runs_again(tmp_path: Path) -> None:
    broken = {"on": True}

    def flaky(request: ModelRequest) -> Any:
        if broken["on"] and request.input_data()["text"] == "bad":
            raise tm.ModelError("provider down", status=400)
        return answer(request)

    agent = classifier(flaky)
    journal = tmp_path / "runs.db"
    inputs = [{"text": "good"}, {"text": "bad"}, {"text": "good too"}]
    first = batch(agent, inputs, batch_id="retry", journal=journal)
    assert [i.status for i in first.items] == ["ok", "failed", "ok"]
    assert first.items[1].error_type == "ModelError"
    # without retry_failed the failure is reported as journaled
    kept = batch(agent, inputs, batch_id="retry", journal=journal, retry_failed=False)
    assert kept.items[1].status == "failed" and kept.items[1].action == "journaled"
    broken["on"] = False
    calls = len(model_of(agent).calls)
    second = batch(agent, inputs, batch_id="retry", journal=journal)
    assert [i.status for i in second.items] == ["ok", "ok", "ok"]
    assert [i.action for i in second.items] == ["journaled", "resumed", "journaled"]
    assert len(model_of(agent).calls) == calls + 1  # only the failed item's call again


def test_a_changed_input_under_the_same_batch_id_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    agent = classifier()
    batch(agent, [{"text": "good"}, {"text": "bad"}], batch_id="c", journal=journal)
    report = batch(agent, [{"text": "good"}, {"text": "worse"}], batch_id="c", journal=journal)
    assert report.items[0].status == "ok"
    changed = report.items[1]
    assert changed.status == "failed" and changed.error_type == "ConfigurationError"
    assert "differs from the input" in str(changed.error) and "new batch id" in str(changed.error)


def test_a_crashed_item_is_resumed_without_repeating_its_tool_call(tmp_path: Path) -> None:
    """An item cut off after its tool ran (a kill, simulated): the re-run resumes it."""
    effects: list[str] = []

    @tm.tool
    def stamp(text: str, ctx: tm.RunContext) -> str:
        """Stamp a review (idempotent)."""
        effects.append(f"{text} {ctx.idempotency_key}")
        return f"stamped {text}"

    class Crash(BaseException):
        pass

    crash = {"at": "b"}

    @tm.step(name="stamper")
    async def stamper(review: Review, ctx: tm.RunContext) -> Verdict:
        receipt = await ctx.call_tool(stamp, text=review.text)
        if crash["at"] == review.text:
            raise Crash  # the process dies here: nothing after the tool is journaled
        return Verdict(sentiment=receipt)

    journal = tmp_path / "runs.db"
    inputs = [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    with pytest.raises(Crash):
        batch(stamper, inputs, batch_id="k", journal=journal, concurrency=1)
    crash["at"] = ""
    report = batch(stamper, inputs, batch_id="k", journal=journal, concurrency=1)
    assert [i.status for i in report.items] == ["ok", "ok", "ok"]
    assert [i.action for i in report.items] == ["journaled", "resumed", "started"]
    assert sorted(e.split()[0] for e in effects) == ["a", "b", "c"]  # b's tool ran once


# -- concurrency, budget, progress ------------------------------------------------------


def test_concurrency_bounds_the_items_running_at_once(tmp_path: Path) -> None:
    now = {"running": 0, "most": 0}

    @tm.step(name="slow")
    async def slow(review: Review) -> Verdict:
        now["running"] += 1
        now["most"] = max(now["most"], now["running"])
        await asyncio.sleep(0.02)
        now["running"] -= 1
        return Verdict(sentiment=review.text)

    inputs = [{"text": str(n)} for n in range(9)]
    report = batch(slow, inputs, batch_id="cc", journal=tm.MemoryJournal(), concurrency=3)
    assert report.complete and now["most"] == 3
    with pytest.raises(tm.ConfigurationError, match="concurrency"):
        batch(slow, inputs, journal=tm.MemoryJournal(), concurrency=0)
    with pytest.raises(tm.ConfigurationError, match="batch id"):
        batch(slow, inputs, journal=tm.MemoryJournal(), batch_id="no spaces")


class Slow:
    """A model that takes a moment, so concurrent items are in flight together."""

    def __init__(self, inner: tm.ScriptedModel) -> None:
        self.inner, self.name, self.provider = inner, inner.name, inner.provider

    async def generate(self, request: ModelRequest) -> ModelResponse:
        await asyncio.sleep(0.05)
        return await self.inner.generate(request)


def test_the_budget_is_shared_by_all_items_and_stops_new_ones(tmp_path: Path) -> None:
    scripted = tm.ScriptedModel(answer, name="gpt-4o-mini")
    checked = tm.ScriptedModel(lambda r: r.input_data(), name="gpt-4o-mini")
    first = tm.Agent("classifier", input=Review, output=Verdict, model=Slow(scripted))
    second = tm.Agent("checker", input=Verdict, output=Verdict, model=Slow(checked))
    flow = tm.sequential(first, second, name="two_calls")
    journal = tmp_path / "runs.db"
    inputs = [{"text": f"good {n}"} for n in range(10)]
    report = batch(
        flow,
        inputs,
        batch_id="bud",
        journal=journal,
        concurrency=2,
        budget=tm.Budget(max_model_calls=3),
    )
    # two items start; their first calls are two of three; one second call fits
    assert len(scripted.calls) + len(checked.calls) == 3
    counts = report.counts
    assert counts["ok"] == 1 and counts["failed"] == 1 and counts["skipped"] == 8
    [over] = report.of("failed")
    assert over.error_type == "BudgetExceeded" and over.usage.model_calls == 1
    assert all(i.error_type == "BudgetExceeded" for i in report.of("skipped"))
    assert all(i.action == "none" and i.run_id for i in report.of("skipped"))
    # run again with a larger budget: it covers what was spent before, and continues
    again = batch(
        flow,
        inputs,
        batch_id="bud",
        journal=journal,
        concurrency=1,
        budget=tm.Budget(max_model_calls=7),
    )
    assert len(scripted.calls) + len(checked.calls) == 7
    assert [i.status for i in again.items[:4]] == ["ok", "ok", "ok", "failed"]
    assert again.items[1].action == "resumed" and again.counts["skipped"] == 6
    assert again.usage.model_calls == 7


def test_a_cost_budget_is_shared_too(tmp_path: Path) -> None:
    agent = classifier()
    one = batch(agent, [{"text": "good"}], journal=tm.MemoryJournal()).usage.cost_usd
    report = batch(
        classifier(),
        [{"text": f"good {n}"} for n in range(8)],
        journal=tm.MemoryJournal(),
        concurrency=1,
        budget=tm.Budget(max_cost_usd=one * 2.5),
    )
    assert report.counts["ok"] == 2
    assert report.usage.cost_usd <= one * 2.5


def test_progress_is_reported_live_and_at_each_item(tmp_path: Path) -> None:
    seen: list[BatchProgress] = []
    inputs = [{"text": "good"}, "{broken", {"text": "bad"}]
    report = batch(
        classifier(),
        [BatchInput(0, {"text": "good"}, 1), BatchInput(1, None, 2, "line 2: bad"), inputs[2]],
        journal=tm.MemoryJournal(),
        progress=seen.append,
        concurrency=1,
    )
    assert seen[0].done == 1 and seen[0].total == 3 and seen[0].item is None  # the malformed one
    ends = [p for p in seen if p.item is not None]
    assert [p.item.index for p in ends if p.item] == [0, 2]
    assert seen[-1].done == 3 and seen[-1].ok == 2 and seen[-1].skipped == 1
    assert seen[-1].success_rate == 1.0
    live = [p for p in seen if p.item is None and p.usage.model_calls]
    assert live, "model calls report progress as they happen"
    assert seen[-1].usage.total_tokens == report.usage.total_tokens


# -- waiting items ------------------------------------------------------------------------


class ApprovalKind(tm.EffectKind):
    """A test-only waiting kind (a human approval)."""

    name: ClassVar[str] = "test_batch_approval"
    may_wait: ClassVar[bool] = True
    commit_result: ClassVar[bool] = True


APPROVAL = tm.register_kind(ApprovalKind())


@tm.step(name="approve")
async def approve(review: Review, ctx: tm.RunContext) -> Verdict:
    async def ask() -> Any:
        return tm.PENDING

    decision = await ctx.perform(APPROVAL, {"text": review.text}, ask)
    return Verdict(sentiment=str(decision))


def test_a_waiting_item_is_reported_and_continued_by_the_next_run(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    inputs = [{"text": "x"}, {"text": "y"}]
    report = batch(approve, inputs, batch_id="w", journal=journal)
    assert report.counts["waiting"] == 2 and report.success_rate is None
    item = report.items[0]
    assert item.waiting == ["approve/test_batch_approval#0"]
    tm.record_result(str(item.run_id), item.waiting[0], "approved", journal=journal)
    again = batch(approve, inputs, batch_id="w", journal=journal)
    assert [i.status for i in again.items] == ["ok", "waiting"]
    assert again.items[0].output == {"sentiment": "approved"}


async def test_abatch_runs_inside_an_event_loop(tmp_path: Path) -> None:
    report = await abatch(classifier(), [{"text": "good"}], journal=tm.MemoryJournal())
    assert report.complete
    with pytest.raises(tm.ConfigurationError, match="event loop"):
        batch(classifier(), [{"text": "good"}], journal=tm.MemoryJournal())


# -- the example ----------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "batch_reviews.py"


def load_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.delenv("TYPEDMESH_MODEL", raising=False)
    spec = importlib.util.spec_from_file_location("typedmesh_example_batch_reviews", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


class NoProse:
    """The model sees the request with its system prompt blanked."""

    def __init__(self, inner: tm.Model) -> None:
        self.inner, self.name, self.provider = inner, inner.name, inner.provider

    async def generate(self, request: ModelRequest) -> ModelResponse:
        messages = [
            Message(role="system", content="") if m.role == "system" else m
            for m in request.messages
        ]
        return await self.inner.generate(request.model_copy(update={"messages": messages}))


def test_the_example_batch_reports_its_malformed_line_and_opens_each_ticket_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ex = load_example(monkeypatch)
    journal = tmp_path / "runs.db"
    report = batch(ex.flow, ex.INPUTS, batch_id="ex", journal=journal)
    assert report.counts == {"ok": 7, "failed": 0, "waiting": 0, "malformed": 1, "skipped": 0}
    [bad] = report.of("malformed")
    assert bad.line == 7 and "stars" in str(bad.error)
    tickets = dict(ex.TICKETS)
    assert len(tickets) == 3
    batch(ex.flow, ex.INPUTS, batch_id="ex", journal=journal)
    assert tickets == ex.TICKETS  # nothing ran again
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    ex.main()  # as tests/test_examples.py calls every example's main
    out = capsys.readouterr().out
    assert "line 7: malformed" in out
    assert re.search(r"^usage: 7 model calls", out, re.M)
    cost = re.search(r"^cost: \$(\d+\.\d{6})", out, re.M)
    assert cost is not None and float(cost.group(1)) > 0
    ex.main(["--batch-id", "again", "--max-cost", "0.00001"])  # too little for one call
    assert "failed 1, malformed 1, waiting 0, skipped 6" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrap", [lambda m: SloppyModel(m, seed=7), NoProse], ids=["sloppy", "no_prose"]
)
def test_the_example_runs_the_same_on_a_sloppy_model_and_without_prose(
    monkeypatch: pytest.MonkeyPatch, wrap: Callable[[tm.Model], tm.Model]
) -> None:
    clean = load_example(monkeypatch)
    expected = batch(clean.flow, clean.INPUTS, journal=tm.MemoryJournal())
    other = load_example(monkeypatch)
    other.reader._model = wrap(other.reader.model)
    report = batch(other.flow, other.INPUTS, journal=tm.MemoryJournal())
    assert [i.output for i in report.items] == [i.output for i in expected.items]
    assert report.usage.model_calls == expected.usage.model_calls
    assert tm.run(other.flow, other.example_input).output.ticket is not None
