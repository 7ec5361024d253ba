"""Dependencies: ``deps=`` on a run reaches steps and tools as ``ctx.deps``.

Deps are typed (a step declares the type it needs, checked before anything
runs), never journaled, and their type's name is part of the flow's identity:
recorded in ``run.started`` and checked again on resume and replay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import typedmesh as tm
from doc_examples import run_doc_example
from typedmesh.errors import ConfigurationError, RunWaiting
from typedmesh.journal import open_journal
from typedmesh.models.offline import ScriptedModel
from typedmesh.runtime.approval import approve
from typedmesh.runtime.context import RunContext
from typedmesh.runtime.deps import (
    DepsError,
    check_deps,
    declared_deps,
    same_deps_type,
    type_name,
)


@dataclass
class Db:
    rows: dict[str, int] = field(default_factory=dict)
    secret: str = "s3cret-connection-string"


@dataclass
class OtherDeps:
    name: str = "other"


class Lookup(BaseModel):
    key: str


class Found(BaseModel):
    value: int


@tm.tool
def read_row(key: str, ctx: RunContext) -> int:
    """Read one row."""
    return int(ctx.deps_as(Db).rows.get(key, -1))


@tm.tool(requires_approval=True, idempotent=False)
def write_row(key: str, value: int, ctx: RunContext) -> str:
    """Write one row (a person approves it first)."""
    ctx.deps_as(Db).rows[key] = value
    return "ok"


def agent(tool: tm.Tool = read_row, deps: type[Any] | None = Db) -> tm.Agent[Lookup, Found]:
    def answer(request: Any) -> Any:
        tool_messages = [m for m in request.messages if m.role == "tool"]
        if not tool_messages:
            arguments = {"key": request.input_data()["key"]}
            if tool.name == "write_row":
                arguments["value"] = 7
            return {"tool_calls": [{"name": tool.name, "arguments": arguments}]}
        content = tool_messages[-1].content
        return Found(value=int(content) if content.lstrip("-").isdigit() else 0)

    return tm.Agent(
        "reader",
        input=Lookup,
        output=Found,
        model=ScriptedModel(answer),
        tools=[tool],
        deps=deps,
    )


def test_a_tool_reaches_the_deps_of_its_run() -> None:
    result = tm.run(agent(), {"key": "a"}, deps=Db(rows={"a": 41}))
    assert result.output.value == 41
    other = tm.run(agent(), {"key": "a"}, deps=Db(rows={"a": 1}))
    assert other.output.value == 1  # no module global: each run has its own


def test_a_function_step_reaches_them_too() -> None:
    @tm.step
    def lookup(query: Lookup, ctx: RunContext) -> Found:
        return Found(value=ctx.deps.rows[query.key])

    assert tm.run(lookup, {"key": "k"}, deps=Db(rows={"k": 3})).output.value == 3


def test_deps_of_the_wrong_type_fail_before_anything_runs(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    flow = agent()
    with pytest.raises(DepsError) as caught:
        tm.run(flow, {"key": "a"}, deps=OtherDeps(), journal=journal, run_id="r1")
    assert caught.value.expected == type_name(Db)
    assert caught.value.got == type_name(OtherDeps)
    assert "needs deps of type test_deps:Db" in str(caught.value)
    assert isinstance(caught.value, ConfigurationError)
    assert not open_journal(journal).exists("r1")  # nothing was journaled
    assert flow.model.calls == []  # type: ignore[attr-defined]


def test_missing_deps_fail_before_anything_runs() -> None:
    flow = agent()
    with pytest.raises(DepsError, match="needs deps of type test_deps:Db: pass deps="):
        tm.run(flow, {"key": "a"})
    assert flow.model.calls == []  # type: ignore[attr-defined]


def test_a_subclass_fits() -> None:
    @dataclass
    class TestDb(Db):
        pass

    assert tm.run(agent(), {"key": "a"}, deps=TestDb(rows={"a": 5})).output.value == 5


def test_ctx_deps_without_deps_says_what_to_do() -> None:
    @tm.step
    def needs(query: Lookup, ctx: RunContext) -> Found:
        return Found(value=ctx.deps.rows[query.key])

    with pytest.raises(DepsError, match=r"has no deps .*pass deps= to run, and again"):
        tm.run(needs, {"key": "k"})


def test_deps_as_checks_the_type() -> None:
    @tm.step
    def needs(query: Lookup, ctx: RunContext) -> Found:
        return Found(value=len(ctx.deps_as(Db).rows))

    with pytest.raises(DepsError, match="wants deps of type test_deps:Db, the run has"):
        tm.run(needs, {"key": "k"}, deps=OtherDeps())


def test_deps_are_not_journaled_but_their_type_is(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    deps = Db(rows={"a": 2})
    tm.run(agent(), {"key": "a"}, deps=deps, journal=journal, run_id="r")
    store = open_journal(journal)
    events = store.read("r")
    assert events[0].payload["deps_type"] == "test_deps:Db"
    raw = Path(journal).read_bytes()
    assert deps.secret.encode() not in raw


def test_a_run_without_deps_records_no_deps_type(tmp_path: Path) -> None:
    @tm.step
    def plain(query: Lookup) -> Found:
        return Found(value=1)

    journal = tmp_path / "runs.db"
    tm.run(plain, {"key": "a"}, journal=journal, run_id="r")
    assert "deps_type" not in open_journal(journal).read("r")[0].payload


def test_undeclared_deps_record_their_own_type(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    tm.run(agent(deps=None), {"key": "a"}, deps=Db(), journal=journal, run_id="r")
    assert open_journal(journal).read("r")[0].payload["deps_type"] == "test_deps:Db"


def wait_for_approval(journal: Path, flow: tm.Agent[Lookup, Found], deps: Db) -> None:
    with pytest.raises(RunWaiting):
        tm.run(flow, {"key": "a"}, deps=deps, journal=journal, run_id="w")
    approve("w", "reader/tool#0", approved=True, by="test", journal=open_journal(journal))


def test_a_resume_needs_the_deps_again(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    first = Db()
    flow = agent(write_row)
    wait_for_approval(journal, flow, first)
    with pytest.raises(DepsError, match="started with deps of type test_deps:Db: deps are not"):
        tm.resume("w", flow, journal=journal)
    with pytest.raises(DepsError, match="needs deps of type test_deps:Db, got test_deps:Other"):
        tm.resume("w", flow, journal=journal, deps=OtherDeps())
    second = Db()
    result = tm.resume("w", flow, journal=journal, deps=second)
    assert result.output.value == 0
    assert second.rows == {"a": 7} and first.rows == {}  # the tool ran once, on the new deps


def test_a_resume_of_a_flow_whose_deps_type_changed_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    wait_for_approval(journal, agent(write_row), Db())
    changed = agent(write_row, deps=OtherDeps)
    with pytest.raises(DepsError) as caught:
        tm.resume("w", changed, journal=journal, deps=OtherDeps())
    assert caught.value.expected == "test_deps:Db"
    assert caught.value.got == "test_deps:OtherDeps"
    assert "part of the flow's identity" in str(caught.value)


def test_a_replay_whose_tools_are_journaled_needs_no_deps(tmp_path: Path) -> None:
    journal = tmp_path / "runs.db"
    tm.run(agent(), {"key": "a"}, deps=Db(rows={"a": 9}), journal=journal, run_id="r")
    replayed = tm.replay("r", agent(), journal=journal)
    assert replayed.identical and replayed.output.value == 9
    assert tm.replay("r", agent(), journal=journal, deps=Db()).identical
    with pytest.raises(DepsError, match="needs deps of type test_deps:Db, got"):
        tm.replay("r", agent(), journal=journal, deps=OtherDeps())
    with pytest.raises(DepsError, match="started with deps of type test_deps:Db, this replay has"):
        tm.replay("r", agent(deps=OtherDeps), journal=journal)


def test_a_replay_of_a_step_that_reads_deps_needs_them(tmp_path: Path) -> None:
    @tm.step
    def count(query: Lookup, ctx: RunContext) -> Found:
        return Found(value=len(ctx.deps.rows))

    journal = tmp_path / "runs.db"
    tm.run(count, {"key": "a"}, deps=Db(rows={"x": 1}), journal=journal, run_id="r")
    assert tm.replay("r", count, journal=journal, deps=Db(rows={"y": 2})).identical
    with pytest.raises(DepsError, match="has no deps"):
        tm.replay("r", count, journal=journal)


def test_several_declared_types_must_all_fit() -> None:
    @dataclass
    class Both(Db, OtherDeps):
        pass

    @tm.step
    def again(found: Found) -> Found:
        return found

    again.deps_type = OtherDeps  # type: ignore[attr-defined]  # any step may declare one
    flow = tm.sequential(agent(), again)
    assert list(declared_deps(flow)) == ["test_deps:Db", "test_deps:OtherDeps"]
    assert check_deps(flow, Both()) == "test_deps:Db & test_deps:OtherDeps"
    with pytest.raises(DepsError, match="needs deps of type test_deps:OtherDeps"):
        check_deps(flow, Db())
    assert tm.run(flow, {"key": "a"}, deps=Both(rows={"a": 4})).output.value == 4


def test_an_agent_refuses_deps_that_are_not_a_class() -> None:
    with pytest.raises(ConfigurationError, match="deps must be a class"):
        tm.Agent("a", input=Lookup, output=Found, model="schema", deps=Db())  # type: ignore[arg-type]


def test_a_type_from_a_script_matches_the_same_type_imported_by_name() -> None:
    assert same_deps_type("__main__:Db", "shop:Db")
    assert same_deps_type("shop:Db & __main__:Other", "__main__:Other & shop:Db")
    assert not same_deps_type("shop:Db", "bank:Db")
    assert not same_deps_type("__main__:Db", "shop:Other")
    assert not same_deps_type("shop:Db", None)
    assert same_deps_type(None, None)


def test_the_docs_example_prints_what_the_docs_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    run_doc_example("deps.md", capsys)
