"""Provider batches (OpenAI Batch, Anthropic Message Batches) through the real SDKs over
real HTTP to the loopback fake: a model call submits and the run waits; resume collects
once the batch has ended; journaled as the model response, replayed exactly, priced at
the batch discount."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_provider_server import (
    Canned,
    FakeProviderServer,
    anthropic_error,
    anthropic_message,
    openai_completion,
    openai_error,
)
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.batch import batch
from typedmesh.models import provider_batch as pb
from typedmesh.models.anthropic import AnthropicModel
from typedmesh.models.openai import OpenAIModel
from typedmesh.models.pricing import cost_of
from typedmesh.runtime.batch_calls import provider_batch

PROVIDERS = ["openai", "anthropic"]
KEY = "classifier/model#0/batch_result#0"


class Review(BaseModel):
    text: str


class Verdict(BaseModel):
    sentiment: str


def make_model(provider: str, server: FakeProviderServer) -> tm.Model:
    if provider == "openai":
        return OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    return AnthropicModel("claude-haiku-4-5", base_url=server.anthropic_base_url)


def classifier(model: tm.Model, **options: Any) -> tm.Agent[Review, Verdict]:
    return tm.Agent("classifier", input=Review, output=Verdict, model=model, **options)


def input_of(params: dict[str, Any]) -> dict[str, Any]:
    user = next(m for m in params["messages"] if m["role"] == "user")
    content = user["content"]
    data: dict[str, Any] = json.loads(content if isinstance(content, str) else content[0]["text"])
    return data


def answer(provider: str, custom_id: str, params: dict[str, Any]) -> Canned:
    """Each request answered from its input, in the provider's wire format."""
    text = input_of(params)["text"]
    body = json.dumps({"sentiment": "positive" if "good" in text else "negative"})
    if provider == "openai":
        return Canned(200, openai_completion(body, prompt_tokens=100, completion_tokens=20))
    return Canned(200, anthropic_message(body, input_tokens=100, output_tokens=20))


def list_price(provider: str) -> float:
    name = "gpt-4o-mini" if provider == "openai" else "claude-haiku-4-5"
    return cost_of(name, 100, 20)


def event_types(journal: Path, run_id: str) -> list[str]:
    with tm.SQLiteJournal(journal) as store:
        return [e.type for e in store.read(run_id)]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_batched_call_waits_then_resume_collects_it_at_half_price(
    provider: str, server: FakeProviderServer, tmp_path: Path
) -> None:
    journal = tmp_path / "runs.db"
    agent = classifier(make_model(provider, server))
    with provider_batch(), pytest.raises(tm.RunWaiting) as waiting:
        tm.run(agent, {"text": "good stuff"}, journal=journal, run_id="r")
    assert waiting.value.waiting == [KEY] and waiting.value.run_id == "r"
    assert server.requests == []  # nothing went to the chat endpoint
    [(custom_id, params)] = server.batches.requests
    assert custom_id == pb.custom_id_for("r", "classifier/model#0#0")
    assert input_of(params) == {"text": "good stuff"}
    if provider == "openai":
        assert params["model"] == "gpt-4o-mini"
        assert params["response_format"]["type"] == "json_schema"
        uploaded = next(iter(server.batches.files.values())).decode()
        line = json.loads(uploaded.splitlines()[0])
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    else:
        assert params["model"] == "claude-haiku-4-5" and params["max_tokens"] > 0
        assert "output_config" in params and "extra_body" not in params
    with tm.SQLiteJournal(journal) as store:
        assert store.head("r").status == "waiting"
    assert tm.waiting_effects("r", journal=journal) == [KEY]

    # the process may exit; a later resume asks the provider: still running
    with pytest.raises(tm.RunWaiting):
        tm.resume("r", agent, journal=journal)
    assert len(server.batches.by_id) == 1  # not submitted again

    assert server.batches.complete(answer) == 1
    result = tm.resume("r", agent, journal=journal)
    assert result.output == Verdict(sentiment="positive")
    assert result.usage.input_tokens == 100 and result.usage.output_tokens == 20
    assert result.usage.model_calls == 1
    assert result.cost_usd == pytest.approx(list_price(provider) * pb.BATCH_DISCOUNT[provider])
    assert pb.BATCH_DISCOUNT[provider] == 0.5
    types = event_types(journal, "r")
    assert types.count("batch_submit.started") == 1 and types.count("model.response") == 1
    assert types.index("batch_result.completed") < types.index("model.response")
    with tm.SQLiteJournal(journal) as store:
        assert tm.verify_run(store, "r").ok

    # journaled as the model response: replay is exact and asks the provider nothing
    calls = len(server.batches.calls)
    replayed = tm.replay("r", agent, journal=journal)
    assert replayed.identical and replayed.executed == 0
    assert len(server.batches.calls) == calls
    again = tm.resume("r", agent, journal=journal)  # finished: its recorded output
    assert again.output == result.output and len(server.batches.calls) == calls


def test_a_batch_of_items_shares_one_provider_batch_and_a_rerun_collects(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    journal = tmp_path / "runs.db"
    agent = classifier(make_model("openai", server))
    inputs = [{"text": "good"}, {"text": "bad"}, {"text": "good too"}, {"text": "meh"}]
    first = batch(agent, inputs, batch_id="pb", journal=journal, provider_batch=True)
    assert first.counts["waiting"] == 4 and first.usage.cost_usd == 0
    assert all(i.waiting == [KEY] for i in first.items)
    [created] = server.batches.by_id.values()
    assert len(created.requests) == 4  # one upload for the whole batch

    # run again before the provider is done: each item is only checked, nothing journaled
    sizes = {i.run_id: len(event_types(journal, str(i.run_id))) for i in first.items}
    early = batch(agent, inputs, batch_id="pb", journal=journal)
    assert [i.action for i in early.items] == ["checked"] * 4
    assert {i.run_id: len(event_types(journal, str(i.run_id))) for i in early.items} == sizes

    server.batches.complete(answer)
    done = batch(agent, inputs, batch_id="pb", journal=journal)
    assert done.complete and [i.action for i in done.items] == ["resumed"] * 4
    assert [i.output for i in done.items] == [
        {"sentiment": s} for s in ("positive", "negative", "positive", "negative")
    ]
    assert done.usage.cost_usd == pytest.approx(4 * list_price("openai") / 2)
    assert len(server.batches.by_id) == 1
    contents = [c for c in server.batches.calls if c[1].endswith("/content")]
    assert len(contents) == 1  # the results file is fetched once for all items


def test_poll_every_keeps_collecting_until_nothing_waits(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    agent = classifier(make_model("anthropic", server))
    server.batches.auto = None
    ticks: list[int] = []

    def progress(state: Any) -> None:
        ticks.append(state.waiting)
        if state.waiting == 2 and not any(
            b.status != "in_progress" for b in server.batches.by_id.values()
        ):
            server.batches.complete(answer)

    report = batch(
        agent,
        [{"text": "good"}, {"text": "bad"}],
        journal=tmp_path / "runs.db",
        provider_batch=True,
        poll_every=0.05,
        progress=progress,
    )
    assert report.complete and 2 in ticks


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_request_the_provider_refused_fails_its_item_alone(
    provider: str, server: FakeProviderServer, tmp_path: Path
) -> None:
    def refuse_bad(provider: str, custom_id: str, params: dict[str, Any]) -> Canned:
        if input_of(params)["text"] == "bad":
            if provider == "openai":
                return Canned(400, openai_error("no such model setting"))
            return Canned(400, anthropic_error("no such model setting"))
        return answer(provider, custom_id, params)

    server.batches.auto = refuse_bad  # batches end as soon as they are created
    agent = classifier(make_model(provider, server))
    report = batch(
        agent,
        [{"text": "good"}, {"text": "bad"}],
        journal=tmp_path / "runs.db",
        provider_batch=True,
    )
    assert [i.status for i in report.items] == ["ok", "failed"]
    failed = report.items[1]
    assert failed.error_type == "ModelError" and "no such model setting" in str(failed.error)


def test_a_transient_failure_is_submitted_again_by_the_retry_policy(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    journal = tmp_path / "runs.db"
    agent = classifier(
        make_model("anthropic", server), retry=tm.RetryPolicy(max_attempts=2, backoff=0)
    )
    with provider_batch(), pytest.raises(tm.RunWaiting):
        tm.run(agent, {"text": "good"}, journal=journal, run_id="t")
    server.batches.complete(
        lambda *_: Canned(529, anthropic_error("busy", type="overloaded_error"))
    )
    with pytest.raises(tm.RunWaiting) as waiting:  # the retry went into a new provider batch
        tm.resume("t", agent, journal=journal)
    assert waiting.value.waiting == ["classifier/model#0.2/batch_result#0"]
    assert len(server.batches.by_id) == 2
    server.batches.complete(answer)
    assert tm.resume("t", agent, journal=journal).output == Verdict(sentiment="positive")
    assert tm.replay("t", agent, journal=journal).identical


def test_resuming_a_run_that_failed_on_a_batched_call_submits_it_again(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    journal = tmp_path / "runs.db"
    agent = classifier(make_model("openai", server), retry=tm.RetryPolicy(max_attempts=1))
    with provider_batch(), pytest.raises(tm.RunWaiting):
        tm.run(agent, {"text": "bad"}, journal=journal, run_id="f")
    server.batches.complete(lambda *_: Canned(500, openai_error("server fell over")))
    with pytest.raises(tm.TransientModelError, match="server fell over"):
        tm.resume("f", agent, journal=journal)
    with pytest.raises(tm.RunWaiting) as waiting:
        tm.resume("f", agent, journal=journal)
    assert waiting.value.waiting == ["classifier/model#0/batch_result#1"]
    server.batches.complete(answer)
    assert tm.resume("f", agent, journal=journal).output == Verdict(sentiment="negative")


def test_a_failed_provider_batch_fails_the_call(server: FakeProviderServer, tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    agent = classifier(make_model("openai", server), retry=tm.RetryPolicy(max_attempts=1))
    with provider_batch(), pytest.raises(tm.RunWaiting):
        tm.run(agent, {"text": "good"}, journal=journal, run_id="x")
    server.batches.complete(status="failed")
    with pytest.raises(tm.ModelError, match="failed: invalid: bad file") as failed:
        tm.resume("x", agent, journal=journal)
    assert failed.value.error_type == "batch_failed"


def test_a_waiting_result_can_be_recorded_by_hand(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    journal = tmp_path / "runs.db"
    agent = classifier(make_model("openai", server))
    with provider_batch(), pytest.raises(tm.RunWaiting):
        tm.run(agent, {"text": "good"}, journal=journal, run_id="h")
    response = tm.ModelResponse(content='{"sentiment": "by hand"}', model="gpt-4o-mini")
    tm.record_result("h", KEY, response.model_dump(), journal=journal, recorded_by="ops")
    assert tm.resume("h", agent, journal=journal).output == Verdict(sentiment="by hand")


def test_models_without_a_batch_api_are_called_as_usual(tmp_path: Path) -> None:
    agent = classifier(tm.ScriptedModel(['{"sentiment": "direct"}'], name="gpt-4o-mini"))
    with provider_batch():
        result = tm.run(agent, {"text": "x"}, journal=tmp_path / "runs.db")
    assert result.output == Verdict(sentiment="direct")
    assert not pb.supports(tm.ScriptedModel([]))


def test_batch_cost_is_half_the_list_price() -> None:
    assert pb.batch_cost("gpt-4o", "openai", 1_000_000, 1_000_000) == pytest.approx(6.25)
    assert pb.batch_cost("claude-sonnet-4", "anthropic", 1_000_000, 0) == pytest.approx(1.5)
    assert pb.batch_cost("unknown", "openai", 10, 10) == 0.0
    assert len(pb.custom_id_for("run", "a/model#0")) <= 64


FLOW = """
from pydantic import BaseModel

import typedmesh as tm


class Review(BaseModel):
    text: str


class Verdict(BaseModel):
    sentiment: str


flow = tm.Agent("classifier", input=Review, output=Verdict, model="openai:gpt-4o-mini")
"""


def test_the_cli_batch_exits_waiting_and_resume_collects(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    (tmp_path / "flow.py").write_text(FLOW)
    (tmp_path / "in.jsonl").write_text('{"text": "good"}\n{"text": "bad"}\n')
    env = {
        "TYPEDMESH_ALLOW_NETWORK": "0",
        "PATH": "/usr/bin:/bin",
        "COLUMNS": "200",
        "OPENAI_BASE_URL": server.openai_base_url,
    }

    def typedmesh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "typedmesh.cli", *args, "--journal", "runs.db"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=env,
        )

    command = ["batch", "flow.py:flow", "-i", "in.jsonl", "--batch-id", "P"]
    first = typedmesh(*command, "--provider-batch")
    assert first.returncode == 4, first.stdout + first.stderr
    assert "waiting 2" in first.stdout and "wait for results" in first.stdout
    still = typedmesh("resume", "P-00000")
    assert still.returncode == 4 and "waiting for classifier/model#0/batch_result#0" in still.stderr
    server.batches.complete(answer)
    one = typedmesh("resume", "P-00000", "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["output"] == {"sentiment": "positive"}
    rest = typedmesh(*command, "--json")
    assert rest.returncode == 0, rest.stderr
    report = json.loads(rest.stdout)
    assert [i["action"] for i in report["items"]] == ["journaled", "resumed"]
    assert [i["output"]["sentiment"] for i in report["items"]] == ["positive", "negative"]
    assert report["cost_usd"] == pytest.approx(list_price("openai"))  # 2 calls at half price
    assert len(server.batches.by_id) == 1
