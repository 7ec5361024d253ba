"""Test overrides: ``tm.override(models=...)`` swaps agents' models anywhere in a flow.

Nothing is rebuilt; the block's overrides are a context variable, so they
reach every task the block's code starts and nothing else: concurrent tests
(tasks or threads) do not see each other's.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from doc_examples import run_doc_example
from typedmesh.errors import ConfigurationError, ModelError
from typedmesh.models.base import Model, ModelRequest
from typedmesh.models.offline import SchemaModel, ScriptedModel
from typedmesh.models.resilience import Cascade, Fallback
from typedmesh.runtime.context import RunContext
from typedmesh.runtime.overrides import overridden_model, override


class Topic(BaseModel):
    name: str


class Take(BaseModel):
    view: str


class Verdict(BaseModel):
    view: str


def says(text: str, name: str = "scripted") -> ScriptedModel:
    return ScriptedModel(lambda request: Take(view=text), name=name)


def explode(request: ModelRequest) -> Any:
    raise AssertionError("the agent's own model was called")


def flow() -> tuple[tm.Agent[Topic, Take], tm.Agent[Take, Verdict], Any]:
    bull = tm.Agent("bull", input=Topic, output=Take, model=ScriptedModel(explode))
    judge = tm.Agent("judge", input=Take, output=Verdict, model=ScriptedModel(explode))
    return bull, judge, tm.sequential(bull, judge)


def test_an_agent_is_overridden_by_name_anywhere_in_a_flow() -> None:
    bull, _, whole = flow()
    with override(models={"bull": says("up"), "judge": says("fair")}):
        assert tm.run(whole, {"name": "x"}).output.view == "fair"
    assert isinstance(bull.model, ScriptedModel) and bull.model.calls == []


def test_a_wildcard_covers_every_agent_not_named() -> None:
    _, _, whole = flow()
    judge = says("named")
    with override(models={"*": SchemaModel(), "judge": judge}):
        result = tm.run(whole, {"name": "x"})
    assert result.output.view == "named"
    assert len(judge.calls) == 1


def test_a_model_string_is_resolved_once_per_block() -> None:
    bull, _, _ = flow()
    with override(models={"bull": "schema:3"}):
        first = bull.model
        assert isinstance(first, SchemaModel) and bull.model is first
        assert tm.run(bull, {"name": "x"}).output.view


def test_the_agent_has_its_own_model_again_after_the_block() -> None:
    bull, _, _ = flow()
    own = bull.model
    with override(models={"*": SchemaModel()}):
        assert bull.model is not own
    assert bull.model is own
    assert overridden_model("bull") is None


def test_the_block_ends_its_override_even_when_it_raises() -> None:
    with pytest.raises(RuntimeError), override(models={"bull": SchemaModel()}):
        raise RuntimeError("boom")
    assert overridden_model("bull") is None


def test_the_innermost_block_that_matches_decides() -> None:
    outer, inner = says("outer"), says("inner")
    with override(models={"bull": outer, "judge": outer}):
        with override(models={"bull": inner}):
            assert overridden_model("bull") is inner
            assert overridden_model("judge") is outer  # the inner block does not name it
            assert overridden_model("other") is None
        with override(models={"*": inner}):
            assert overridden_model("bull") is inner
        assert overridden_model("bull") is outer


def test_a_fallback_agent_is_overridden_whole() -> None:
    agent = tm.Agent(
        "bull", input=Topic, output=Take, model=[ScriptedModel(explode), ScriptedModel(explode)]
    )
    assert isinstance(agent.model, Fallback)
    with override(models={"bull": says("swapped")}):
        assert tm.run(agent, {"name": "x"}).output.view == "swapped"


def test_a_cascade_agent_is_overridden_whole() -> None:
    agent = tm.Agent(
        "bull",
        input=Topic,
        output=Take,
        model=Cascade(ScriptedModel(explode), ScriptedModel(explode)),
    )
    with override(models={"bull": says("swapped")}):
        assert tm.run(agent, {"name": "x"}).output.view == "swapped"


def test_an_override_may_be_a_fallback_list() -> None:
    def broken(request: ModelRequest) -> Any:
        raise ModelError("down")

    backup = says("from the backup", name="backup")
    bull, _, _ = flow()
    with override(models={"bull": [ScriptedModel(broken, name="primary"), backup]}):
        assert isinstance(bull.model, Fallback)
        assert tm.run(bull, {"name": "x"}).output.view == "from the backup"


def test_a_cascade_may_be_swapped_in() -> None:
    cheap = ScriptedModel(["not json"], name="cheap")
    better = says("better", name="better")
    bull = tm.Agent(
        "bull", input=Topic, output=Take, model=ScriptedModel(explode), output_retries=1
    )
    with override(models={"bull": Cascade(cheap, better)}):
        assert tm.run(bull, {"name": "x"}).output.view == "better"


def test_flow_checks_every_name() -> None:
    _, _, whole = flow()
    with (
        pytest.raises(ConfigurationError, match=r"has no agent named 'bul' .*its agents: bull"),
        override(models={"bul": SchemaModel()}, flow=whole),
    ):
        pass
    with override(models={"bull": SchemaModel(), "*": SchemaModel()}, flow=whole):
        pass


def test_a_value_that_is_no_model_is_refused() -> None:
    with (
        pytest.raises(ConfigurationError, match="'bull' must map to a Model"),
        override(models={"bull": 42}),  # type: ignore[dict-item]
    ):
        pass
    with (
        pytest.raises(ConfigurationError, match="must map to a Model"),
        override(models={"bull": []}),
    ):
        pass


async def test_concurrent_tasks_do_not_see_each_others_overrides() -> None:
    bull, _, _ = flow()
    both_inside = asyncio.Barrier(2)

    async def case(text: str) -> str:
        with override(models={"bull": says(text)}):
            await both_inside.wait()  # each block is open while the other runs
            result = await tm.arun(bull, {"name": "x"})
            await both_inside.wait()
            return result.output.view

    assert list(await asyncio.gather(case("a"), case("b"))) == ["a", "b"]
    assert overridden_model("bull") is None


def test_concurrent_threads_do_not_see_each_others_overrides() -> None:
    bull, _, _ = flow()
    both_inside = threading.Barrier(2, timeout=10)
    seen: dict[str, str] = {}

    def case(text: str) -> None:
        with override(models={"bull": says(text)}):
            both_inside.wait()
            seen[text] = tm.run(bull, {"name": "x"}).output.view
            both_inside.wait()

    threads = [threading.Thread(target=case, args=(t,)) for t in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"a": "a", "b": "b"}


def test_branches_run_as_tasks_see_the_override() -> None:
    bull, _, _ = flow()

    @tm.step
    async def both(topic: Topic, ctx: RunContext) -> Take:
        takes = await ctx.run_all(
            [
                lambda: ctx.run(bull, topic, label="first"),
                lambda: ctx.run(bull, topic, label="second"),
            ]
        )
        return Take(view="+".join(t.view for t in takes))

    with override(models={"bull": says("same")}):
        assert tm.run(both, {"name": "x"}).output.view == "same+same"


def test_an_override_is_a_model() -> None:
    with override(models={"*": "schema"}):
        assert isinstance(overridden_model("anyone"), Model)


def test_the_docs_example_prints_what_the_docs_say(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)  # the example needs no key
    run_doc_example("overrides.md", capsys)


def test_a_run_made_under_an_override_replays_without_it(tmp_path: Any) -> None:
    bull, _, _ = flow()
    journal = tmp_path / "runs.db"
    with override(models={"bull": says("scripted")}):
        tm.run(bull, {"name": "x"}, journal=journal, run_id="r")
    replayed = tm.replay("r", bull, journal=journal)  # its own model would explode
    assert replayed.identical and replayed.output.view == "scripted"
