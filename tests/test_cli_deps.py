"""``--deps MODULE:ATTR`` on run, resume and replay: deps across real processes.

A run that needs deps waits for an approval and its process exits; another
process resumes it and must be handed deps of the recorded type again.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from cli_process import typedmesh_in

FLOW = textwrap.dedent("""
    from dataclasses import dataclass
    from pydantic import BaseModel
    import typedmesh as tm

    @dataclass
    class Shop:
        stock: dict[str, int]

    def open_shop() -> Shop:
        return Shop(stock={"mug": 3})

    test_shop = Shop(stock={"mug": 0})

    class Other:
        pass

    class Ask(BaseModel):
        item: str

    class Answer(BaseModel):
        note: str

    @tm.tool(requires_approval=True)
    def reserve(item: str, ctx: tm.RunContext) -> str:
        \"\"\"Reserve one item (a person approves first).\"\"\"
        return f"{ctx.deps_as(Shop).stock.get(item, 0)} {item} in stock"

    def desk(request):
        told = [m.content for m in request.messages if m.role == "tool"]
        if told:
            return {"note": told[-1]}
        return {"tool_calls": [{"name": "reserve", "arguments": request.input_data()}]}

    clerk = tm.Agent("clerk", input=Ask, output=Answer, tools=[reserve], deps=Shop,
                     model=tm.ScriptedModel(desk, name="gpt-4o-mini"))

    @tm.step(deps=Shop)
    def count(a: Ask, ctx: tm.RunContext) -> Answer:
        return Answer(note=str(ctx.deps_as(Shop).stock.get(a.item, 0)))

    def broken() -> Shop:
        raise RuntimeError("database is down")
""")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "shop_flow.py").write_text(FLOW)
    return tmp_path


def typedmesh(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return typedmesh_in(cwd, *args, journal="runs.db")


def test_deps_from_a_factory_survive_a_process_exit(workdir: Path) -> None:
    flow = f"{workdir}/shop_flow.py"
    args = ("--input", '{"item": "mug"}', "--run-id", "r1", "--deps", f"{flow}:open_shop")
    waiting = typedmesh(workdir, "run", f"{flow}:clerk", *args)
    assert waiting.returncode == 4, waiting.stdout + waiting.stderr
    approved = typedmesh(workdir, "approve", "r1", "clerk/tool#0", "--by", "ops")
    assert approved.returncode == 0, approved.stderr

    missing = typedmesh(workdir, "resume", "r1", "--json")
    assert missing.returncode == 2 and json.loads(missing.stdout)["error"] == "DepsError"

    wrong = typedmesh(workdir, "resume", "r1", "--deps", f"{flow}:Other")
    assert wrong.returncode == 2 and "DepsError" in wrong.stderr + wrong.stdout

    done = typedmesh(workdir, "resume", "r1", "--deps", f"{flow}:open_shop", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["output"] == {"note": "3 mug in stock"}


def test_a_step_declares_deps_and_an_object_is_taken_as_is(workdir: Path) -> None:
    flow = f"{workdir}/shop_flow.py"
    done = typedmesh(
        workdir,
        "run",
        f"{flow}:count",
        "-i",
        '{"item": "mug"}',
        "--json",
        "--run-id",
        "c1",
        "--deps",
        f"{flow}:test_shop",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["output"] == {"note": "0"}

    replayed = typedmesh(workdir, "replay", "c1", "--json", "--deps", f"{flow}:test_shop")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert json.loads(replayed.stdout)["identical"] is True

    refused = typedmesh(workdir, "run", f"{flow}:count", "-i", '{"item": "mug"}', "--json")
    assert refused.returncode == 2 and json.loads(refused.stdout)["error"] == "DepsError"


def test_a_failing_factory_is_one_line(workdir: Path) -> None:
    flow = f"{workdir}/shop_flow.py"
    done = typedmesh(
        workdir, "run", f"{flow}:count", "-i", '{"item": "mug"}', "--deps", f"{flow}:broken"
    )
    assert done.returncode == 2
    assert "database is down" in done.stderr and "Traceback" not in done.stderr
