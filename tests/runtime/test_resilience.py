"""Fallback models, cascades, circuit breakers and per-request timeouts: each decision
journaled, so a replay takes the same path without calling anything."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest
from typedmesh.models.resilience import BREAKERS


class Q(BaseModel):
    q: str


class A(BaseModel):
    answer: str


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    BREAKERS.reset()
    yield
    BREAKERS.reset()


class Counting:
    """A scripted model that counts the calls that reach it."""

    def __init__(self, name: str, *answers: Any) -> None:
        self.calls = 0
        self.inner = tm.ScriptedModel(self.respond, name=name)
        self.name = name
        self.provider = "offline"
        self.answers = list(answers)

    def respond(self, request: ModelRequest) -> Any:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return answer

    async def generate(self, request: ModelRequest) -> tm.ModelResponse:
        return await self.inner.generate(request)


def agent(model: Any, **options: Any) -> tm.Agent[Q, A]:
    return tm.Agent("a", input=Q, output=A, model=model, **options)


def test_a_fallback_list_takes_the_next_model_and_replays_without_calling() -> None:
    primary = Counting("gpt-4o", tm.ModelError("model overloaded", status=529))
    backup = Counting("gpt-4o-mini", '{"answer": "from backup"}')
    journal = tm.MemoryJournal()
    result = tm.run(agent([primary, backup]), {"q": "?"}, journal=journal, run_id="r")
    assert result.output.answer == "from backup" and (primary.calls, backup.calls) == (1, 1)
    events = journal.read("r")
    [fallback] = [e for e in events if e.type == "model.fallback"]
    assert fallback.payload["model"] == "gpt-4o" and fallback.payload["next"] == "gpt-4o-mini"
    served = [e.payload["model"] for e in events if e.type == "model.request"]
    assert served == ["gpt-4o", "gpt-4o-mini"]
    replayed = tm.replay("r", agent([primary, backup]), journal=journal)
    assert replayed.identical and replayed.executed == 0
    assert (primary.calls, backup.calls) == (1, 1)


def test_a_fallback_only_on_the_errors_it_names() -> None:
    primary = Counting("gpt-4o", tm.ModelError("bad request", status=400))
    backup = Counting("gpt-4o-mini", '{"answer": "b"}')
    fallback = tm.Fallback(primary, backup, on=[tm.TransientModelError])
    with pytest.raises(tm.ModelError, match="bad request"):
        tm.run(agent(fallback), {"q": "?"})
    assert backup.calls == 0


def test_transient_errors_are_retried_before_falling_back() -> None:
    primary = Counting("gpt-4o", tm.TransientModelError("busy", retry_after=0))
    backup = Counting("gpt-4o-mini", '{"answer": "b"}')
    retry = tm.RetryPolicy(max_attempts=3, backoff=0)
    journal = tm.MemoryJournal()
    result = tm.run(agent([primary, backup], retry=retry), {"q": "?"}, journal=journal, run_id="r")
    assert result.output.answer == "b" and primary.calls == 3
    assert tm.replay("r", agent([primary, backup], retry=retry), journal=journal).identical


def test_an_open_breaker_skips_the_model_until_a_half_open_probe() -> None:
    breaker = tm.CircuitBreaker(failures=2, window_s=60, cooldown_s=0.2)
    primary = Counting("gpt-4o", tm.ModelError("down"), tm.ModelError("down"), '{"answer": "p"}')
    backup = Counting("gpt-4o-mini", '{"answer": "b"}')
    flow = agent([primary, backup], breaker=breaker)
    for _ in range(2):  # two failures open the circuit
        assert tm.run(flow, {"q": "?"}).output.answer == "b"
    assert primary.calls == 2 and BREAKERS.state("offline:gpt-4o") == "open"
    journal = tm.MemoryJournal()
    assert tm.run(flow, {"q": "?"}, journal=journal, run_id="r").output.answer == "b"
    assert primary.calls == 2  # not called: the circuit is open
    events = journal.read("r")
    assert next(e.payload["value"] for e in events if e.type == "breaker") == "open"
    assert any(e.type == "model.circuit_open" for e in events)
    replayed = tm.replay("r", flow, journal=journal)  # the breaker is not asked again
    assert replayed.identical and replayed.executed == 0
    time.sleep(0.25)
    assert tm.run(flow, {"q": "?"}).output.answer == "p"  # the probe succeeds
    assert primary.calls == 3 and BREAKERS.state("offline:gpt-4o") == "closed"


def test_a_breaker_without_a_fallback_fails_fast_with_circuit_open() -> None:
    breaker = tm.CircuitBreaker(failures=1, window_s=60, cooldown_s=60)
    model = Counting("gpt-4o", tm.ModelError("down"))
    with pytest.raises(tm.ModelError):
        tm.run(agent(model, breaker=breaker), {"q": "?"})
    with pytest.raises(tm.CircuitOpen, match="circuit breaker is open"):
        tm.run(agent(model, breaker=breaker), {"q": "?"})
    assert model.calls == 1


def test_one_breaker_is_shared_by_agents_on_other_threads_and_event_loops() -> None:
    breaker = tm.CircuitBreaker(failures=4, window_s=60, cooldown_s=60)
    model = Counting("gpt-4o", tm.ModelError("down"))
    errors: list[str] = []

    def worker() -> None:
        for _ in range(3):
            try:
                asyncio.run(tm.arun(agent(model, breaker=breaker), {"q": "?"}))
            except tm.ModelError as exc:
                errors.append(type(exc).__name__)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert model.calls == 4 and errors.count("CircuitOpen") == 2


def test_a_cascade_escalates_only_after_an_invalid_answer() -> None:
    cheap = Counting("gpt-4o-mini", "I think the answer is yes", '{"answer": "cheap"}')
    better = Counting("gpt-4o", '{"answer": "better"}')
    journal = tm.MemoryJournal()
    flow = agent(tm.Cascade(cheap, better))
    result = tm.run(flow, {"q": "?"}, journal=journal, run_id="r")
    assert result.output.answer == "better" and (cheap.calls, better.calls) == (1, 1)
    [escalated] = [e for e in journal.read("r") if e.type == "model.escalated"]
    assert escalated.payload == {
        "from_model": "gpt-4o-mini",
        "to_model": "gpt-4o",
        "reason": "validation",
    }
    assert result.usage.model_calls == 2
    assert tm.replay("r", flow, journal=journal).identical
    # a valid first answer never escalates
    cheap2 = Counting("gpt-4o-mini", '{"answer": "cheap"}')
    assert tm.run(agent(tm.Cascade(cheap2, better)), {"q": "?"}).output.answer == "cheap"
    assert better.calls == 1


def test_a_slow_model_times_out_per_request_and_falls_back() -> None:
    class Slow(Counting):
        async def generate(self, request: ModelRequest) -> tm.ModelResponse:
            self.calls += 1
            await asyncio.sleep(5)
            raise AssertionError("not reached")

    slow = Slow("gpt-4o", None)
    backup = Counting("gpt-4o-mini", '{"answer": "b"}')
    started = time.monotonic()
    result = tm.run(agent([slow, backup], model_timeout=0.05), {"q": "?"})
    assert result.output.answer == "b" and time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: tm.Fallback(), "at least one model"),
        (lambda: tm.Fallback("openai:gpt-4o", on=[]), "at least one error type"),
        (lambda: tm.Fallback("openai:gpt-4o", on=[int]), "not an exception type"),
        (lambda: tm.Cascade("openai:gpt-4o"), "at least two models"),
        (lambda: tm.CircuitBreaker(failures=0), "failures must be >= 1"),
        (lambda: tm.CircuitBreaker(cooldown_s=0), "cooldown_s must be > 0"),
        (lambda: tm.CircuitBreaker(window_s=float("nan")), "window_s must be > 0"),
        (lambda: agent([]), "at least one model"),
        (lambda: agent("schema", model_timeout=0), "model_timeout must be > 0"),
    ],
)
def test_bad_resilience_arguments_are_typed_errors(build: Any, match: str) -> None:
    with pytest.raises(tm.ConfigurationError, match=match):
        build()


def test_a_tool_call_past_its_timeout_is_cancelled_and_told_to_the_model() -> None:
    ran: list[str] = []

    @tm.tool(timeout=0.05)
    async def lookup(order_id: str) -> str:
        """Look an order up (slowly)."""
        await asyncio.sleep(5)
        ran.append(order_id)
        return "found"

    def respond(request: ModelRequest) -> Any:
        told = [m.content for m in request.messages if m.role == "tool"]
        if not told:
            return {"tool_calls": [{"name": "lookup", "arguments": {"order_id": "7"}}]}
        return {"answer": told[-1]}

    journal = tm.MemoryJournal()
    flow = tm.Agent("a", input=Q, output=A, model=tm.ScriptedModel(respond), tools=[lookup])
    started = time.monotonic()
    result = tm.run(flow, {"q": "?"}, journal=journal, run_id="r")
    assert time.monotonic() - started < 2 and ran == []
    assert "timed out after 0.05 s" in result.output.answer
    assert any(e.type == "tool.error" for e in journal.read("r"))
    assert tm.replay("r", flow, journal=journal).identical
    with pytest.raises(tm.ConfigurationError, match="timeout must be > 0"):
        tm.tool(timeout=0)(lambda x: x)
