"""Framework overhead of typedmesh next to LangGraph and Pydantic AI.

A script, not a test: it prints tables. Run it in its own virtualenv:

    bash benchmarks/setup.sh && benchmarks/.venv/bin/python benchmarks/overhead.py

Every model here is a local fake that answers at once (or after a fixed sleep), so
what is measured is the framework around the model call. No network is used; a peer
that is not installed is reported and its rows are skipped.

    --quick          a fast smoke run (fewer rounds, fewer events)
    --only A,B       run some sections: chain, fanout, journal, import
    --profile        also print cProfile tables of the typedmesh side (chain without a
                     journal, with a fresh SQLite file, with journal="runs.db"; fan-out)
    --plain          plain-text tables even when rich is installed (for logs, README)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib.metadata
import json
import operator
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypedDict

# no peer may phone home: LangSmith tracing stays off whatever the shell says
for _var in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING"):
    os.environ[_var] = "false"

from pydantic import BaseModel, create_model  # noqa: E402

import typedmesh as tm  # noqa: E402
from typedmesh.journal import EventLog, JournalSink, new_owner  # noqa: E402
from typedmesh.journal.events import Event  # noqa: E402

STEPS = 10
BRANCHES = 100
FAN_DELAY_S = 0.050
BATCH = 256  # JournalSink's default batch size; the raw sqlite3 baseline uses the same

TARGET_SQLITE_STEP = 1 / 10  # typedmesh+SQLite step <= 1/10 of LangGraph+SqliteSaver's
TARGET_PATH = 1.2  # journal="runs.db" (a path) <= 1.2x an open SQLiteJournal passed in
TARGET_PLAIN_STEP = 1 / 3  # un-journaled step <= 1/3 of LangGraph's without checkpointer
TARGET_FANOUT = 1.10  # fan-out wall <= 1.1x the floor (bare asyncio gather of the sleeps)
TARGET_APPEND = 0.5  # journal append >= 0.5x raw sqlite3 executemany
TARGET_IMPORT_S = 0.25  # cold `import typedmesh`


@dataclass(frozen=True)
class Settings:
    chain_rounds: int
    chain_warmup: int
    fan_rounds: int
    events: int
    append_repeats: int
    import_runs: int
    profile_rounds: int
    chunks: int


FULL = Settings(300, 20, 15, 20_000, 3, 9, 300, 10)
QUICK = Settings(25, 3, 2, 2_000, 1, 3, 30, 1)


# -- the payload every framework passes along ------------------------------------


class Msg(BaseModel):
    """The structured input and output of every step."""

    text: str
    n: int


ANSWER = {"text": "the quick brown fox jumps over the lazy dog", "n": 7}
ANSWER_JSON = json.dumps(ANSWER)
START_MSG = Msg(text="hello", n=0)


class Merged(BaseModel):
    """What the fan-out's merge returns (the peers' version; typedmesh adds conflicts)."""

    n: int


class ChainState(TypedDict):
    """LangGraph state of the chain (module level: LangGraph resolves its annotations)."""

    msg: Msg


class FanState(TypedDict, total=False):
    msg: Msg
    results: Annotated[list[Msg], operator.add]
    merged: Merged


def instructions(i: int) -> str:
    return f"You are step {i} of a chain. Rewrite the text and count the words in it."


# -- results and printing ---------------------------------------------------------


@dataclass
class Report:
    chain: list[dict[str, Any]] = field(default_factory=list)
    fanout: list[dict[str, Any]] = field(default_factory=list)
    journal: list[dict[str, Any]] = field(default_factory=list)
    imports: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)


PLAIN = False
"""Set by --plain: print aligned text even when rich is importable."""


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table when rich is importable, else aligned plain text."""
    try:
        if PLAIN:
            raise ImportError("--plain")
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        print(f"\n{title}")
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        print("  ".join("-" * w for w in widths))
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        return
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def summary(samples: list[float]) -> tuple[float, float]:
    """Median and 90th percentile of a list of durations."""
    med = statistics.median(samples)
    p90 = statistics.quantiles(samples, n=10)[-1] if len(samples) >= 10 else max(samples)
    return med, p90


# -- typedmesh side ---------------------------------------------------------------


class InstantModel:
    """A typedmesh Model that returns one precomputed response: no work of its own."""

    provider = "offline"

    def __init__(self, content: str, *, name: str = "instant", delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.response = tm.ModelResponse(
            content=content,
            model=name,
            usage=tm.Usage(input_tokens=60, output_tokens=16, model_calls=1),
        )

    async def generate(self, request: tm.ModelRequest) -> tm.ModelResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.response


def tm_chain() -> tm.Step[Msg, Msg]:
    model = InstantModel(ANSWER_JSON)
    agents = [
        tm.Agent(f"step{i}", input=Msg, output=Msg, model=model, instructions=instructions(i))
        for i in range(STEPS)
    ]
    return tm.sequential(*agents, name="chain")


def tm_fanout(delay: float = FAN_DELAY_S) -> tm.Step[Msg, Any]:
    sleepy = InstantModel(ANSWER_JSON, name="sleepy", delay=delay)
    branches = {
        f"b{i}": tm.Agent(f"b{i}", input=Msg, output=Msg, model=sleepy, instructions="branch")
        for i in range(BRANCHES)
    }
    fan_in: Any = create_model(
        "FanIn", **{label: (Msg, ...) for label in branches}
    )  # one field per branch, as parallel() requires
    merged: Any = create_model(
        "Merged", n=(int, ...), conflicts=(list[tm.Conflict], []), __base__=BaseModel
    )
    merge = tm.Agent(
        "merge",
        input=fan_in,
        output=merged,
        model=InstantModel(json.dumps({"n": BRANCHES, "conflicts": []})),
        instructions="Merge the branches.",
    )
    return tm.parallel(merge=merge, name="fanout", **branches)


@dataclass
class Case:
    """One row: ``run(i)`` is timed; ``setup(i)`` and ``teardown(i)`` are not.

    The callables are async when ``is_async`` (run on one long-lived event loop),
    plain functions otherwise. ``i`` is unique across the whole measurement, so a
    case can name a fresh file per round after it.
    """

    framework: str
    label: str
    key: str
    run: Callable[[int], Any]
    setup: Callable[[int], Any] | None = None
    teardown: Callable[[int], Any] | None = None
    is_async: bool = True
    samples: list[float] = field(default_factory=list)
    done: int = 0


async def _measure_async(case: Case, rounds: int, warmup: int) -> None:
    for n in range(warmup + rounds):
        i = case.done
        case.done += 1
        if case.setup is not None:
            await case.setup(i)
        start = time.perf_counter()
        await case.run(i)
        elapsed = time.perf_counter() - start
        if case.teardown is not None:
            await case.teardown(i)
        if n >= warmup:
            case.samples.append(elapsed)


def _measure_sync(case: Case, rounds: int, warmup: int) -> None:
    for n in range(warmup + rounds):
        i = case.done
        case.done += 1
        if case.setup is not None:
            case.setup(i)
        start = time.perf_counter()
        case.run(i)
        elapsed = time.perf_counter() - start
        if case.teardown is not None:
            case.teardown(i)
        if n >= warmup:
            case.samples.append(elapsed)


def measure(
    cases: list[Case], rounds: int, warmup: int, chunks: int, runner: asyncio.Runner
) -> None:
    """Time every case ``rounds`` times, interleaved in ``chunks`` so that a change of
    load on the machine (other processes) falls on every row alike."""
    chunks = max(1, min(chunks, rounds))
    for c in range(chunks):
        n = rounds // chunks + (1 if c < rounds % chunks else 0)
        for case in cases:
            gc.collect()
            w = warmup if c == 0 else 0
            if case.is_async:
                runner.run(_measure_async(case, n, w))
            else:
                _measure_sync(case, n, w)


# -- section 1: chain, typedmesh --------------------------------------------------


def tm_chain_cases(tmp: Path, runner: asyncio.Runner) -> list[Case]:
    """The typedmesh rows. Every journaled run commits each model response and each
    finished step before it is used (the durable default): 22 appends for 10 steps."""
    flow = tm_chain()
    result = runner.run(tm.arun(flow, START_MSG))
    assert result.output == Msg(**ANSWER), result.output
    journals: dict[str, Any] = {}
    # one journal file reused by every round, as an application keeps its runs.db:
    # opened once and passed in, or named by its path on every run (the runtime keeps
    # one cached connection per path and process)
    held_open = tm.SQLiteJournal(tmp / "runs-open.db")
    by_path_name = str(tmp / "runs.db")

    async def plain(i: int) -> None:
        await tm.arun(flow, START_MSG)

    def journaled(tag: str) -> Callable[[int], Awaitable[None]]:
        async def run(i: int) -> None:
            await tm.arun(flow, START_MSG, journal=journals[f"{tag}{i}"])

        return run

    async def new_memory(i: int) -> None:
        journals[f"m{i}"] = tm.MemoryJournal()

    async def new_sqlite(i: int) -> None:
        journals[f"s{i}"] = tm.SQLiteJournal(tmp / f"tm-chain-{i}.db")

    def closer(tag: str) -> Callable[[int], Awaitable[None]]:
        async def close(i: int) -> None:
            journals.pop(f"{tag}{i}").close()

        return close

    async def open_journal(i: int) -> None:
        await tm.arun(flow, START_MSG, journal=held_open)

    async def by_path(i: int) -> None:
        await tm.arun(flow, START_MSG, journal=by_path_name)

    return [
        Case("typedmesh", "no journal", "tm_plain", plain),
        Case(
            "typedmesh",
            "tm.MemoryJournal(), new per round",
            "tm_memory",
            journaled("m"),
            new_memory,
            closer("m"),
        ),
        Case(
            "typedmesh",
            "tm.SQLiteJournal(path), fresh file per round",
            "tm_sqlite",
            journaled("s"),
            new_sqlite,
            closer("s"),
        ),
        Case(
            "typedmesh",
            "open tm.SQLiteJournal passed in, one file for all rounds",
            "tm_sqlite_open",
            open_journal,
        ),
        Case(
            "typedmesh",
            'journal="runs.db" (a path), one file for all rounds',
            "tm_sqlite_path",
            by_path,
        ),
        Case(
            "typedmesh",
            "(info) tm.run(), sync: a new event loop per run",
            "tm_sync",
            lambda i: tm.run(flow, START_MSG),
            is_async=False,
        ),
    ]


# -- LangGraph side ---------------------------------------------------------------


def langgraph_parts() -> Any:
    """The LangGraph pieces, built on import so a missing peer only skips its rows."""
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    class FakeStructuredChat(BaseChatModel):
        """Answers every call with one precomputed tool call (structured output)."""

        tool_name: str
        args: dict[str, Any]
        delay: float = 0.0

        @property
        def _llm_type(self) -> str:
            return "fake-structured"

        def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
            formatted = [convert_to_openai_tool(t) for t in tools]
            return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

        def _result(self) -> ChatResult:
            message = AIMessage(
                content="",
                tool_calls=[{"name": self.tool_name, "args": self.args, "id": "call_0"}],
                usage_metadata={"input_tokens": 60, "output_tokens": 16, "total_tokens": 76},
            )
            return ChatResult(generations=[ChatGeneration(message=message)])

        def _generate(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> ChatResult:
            return self._result()

        async def _agenerate(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> ChatResult:
            if self.delay:
                await asyncio.sleep(self.delay)
            return self._result()

    def prompt(i: int, msg: Msg) -> list[Any]:
        return [SystemMessage(instructions(i)), HumanMessage(msg.model_dump_json())]

    llm = FakeStructuredChat(tool_name="Msg", args=ANSWER).with_structured_output(Msg)

    def chain_builder(use_async: bool) -> Any:
        builder = StateGraph(ChainState)
        previous = START
        for i in range(STEPS):
            if use_async:

                async def anode(state: ChainState, i: int = i) -> dict[str, Any]:
                    return {"msg": await llm.ainvoke(prompt(i, state["msg"]))}

                builder.add_node(f"step{i}", anode)
            else:

                def node(state: ChainState, i: int = i) -> dict[str, Any]:
                    return {"msg": llm.invoke(prompt(i, state["msg"]))}

                builder.add_node(f"step{i}", node)
            builder.add_edge(previous, f"step{i}")
            previous = f"step{i}"
        builder.add_edge(previous, END)
        return builder

    sleepy = FakeStructuredChat(tool_name="Msg", args=ANSWER, delay=FAN_DELAY_S)
    branch_llm = sleepy.with_structured_output(Msg)
    merge_llm = FakeStructuredChat(tool_name="Merged", args={"n": BRANCHES})
    merge_structured = merge_llm.with_structured_output(Merged)

    def fan_graph() -> Any:
        def route(state: FanState) -> list[Any]:
            return [Send("branch", {"msg": state["msg"]}) for _ in range(BRANCHES)]

        async def branch(state: FanState) -> dict[str, Any]:
            return {"results": [await branch_llm.ainvoke(prompt(0, state["msg"]))]}

        async def merge(state: FanState) -> dict[str, Any]:
            listing = json.dumps([m.model_dump() for m in state["results"]])
            answer = await merge_structured.ainvoke(
                [SystemMessage("Merge the branches."), HumanMessage(listing)]
            )
            return {"merged": answer}

        builder = StateGraph(FanState)
        builder.add_node("branch", branch)
        builder.add_node("merge", merge)
        builder.add_conditional_edges(START, route, ["branch"])
        builder.add_edge("branch", "merge")
        builder.add_edge("merge", END)
        return builder.compile()

    return chain_builder, fan_graph


def langgraph_chain_cases(tmp: Path, parts: Any, runner: asyncio.Runner) -> list[Case]:
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    chain_builder, _ = parts
    sync_builder = chain_builder(use_async=False)
    async_builder = chain_builder(use_async=True)
    sync_graph = sync_builder.compile()
    async_graph = async_builder.compile()
    assert sync_graph.invoke({"msg": START_MSG})["msg"] == Msg(**ANSWER)
    held: dict[str, tuple[Any, Any]] = {}

    def open_saver(tag: str) -> Callable[[int], None]:
        def setup(i: int) -> None:
            conn = sqlite3.connect(tmp / f"lg-{tag}-{i}.db", check_same_thread=False)
            saver = SqliteSaver(conn)
            saver.setup()  # table creation stays outside the clock, as for typedmesh
            held[f"{tag}{i}"] = (conn, sync_builder.compile(checkpointer=saver))

        return setup

    def close_saver(tag: str) -> Callable[[int], None]:
        return lambda i: held.pop(f"{tag}{i}")[0].close()

    def run_saved(tag: str, durability: str) -> Callable[[int], None]:
        def run(i: int) -> None:
            config: Any = {"configurable": {"thread_id": f"bench-{i}"}}
            held[f"{tag}{i}"][1].invoke({"msg": START_MSG}, config, durability=durability)

        return run

    async def open_async(i: int) -> None:
        manager = AsyncSqliteSaver.from_conn_string(str(tmp / f"lg-async-{i}.db"))
        saver = await manager.__aenter__()
        await saver.setup()
        held[f"a{i}"] = (manager, async_builder.compile(checkpointer=saver))

    async def run_async_saved(i: int) -> None:
        config: Any = {"configurable": {"thread_id": f"bench-{i}"}}
        await held[f"a{i}"][1].ainvoke({"msg": START_MSG}, config)

    async def close_async(i: int) -> None:
        await held.pop(f"a{i}")[0].__aexit__(None, None, None)

    async def run_async_plain(i: int) -> None:
        await async_graph.ainvoke({"msg": START_MSG})

    return [
        Case(
            "LangGraph",
            "invoke(), no checkpointer",
            "lg_plain_sync",
            lambda i: sync_graph.invoke({"msg": START_MSG}),
            is_async=False,
        ),
        Case("LangGraph", "ainvoke(), no checkpointer", "lg_plain_async", run_async_plain),
        Case(
            "LangGraph",
            "invoke(), SqliteSaver, fresh file per round",
            "lg_sqlite_sync",
            run_saved("s", "async"),
            open_saver("s"),
            close_saver("s"),
            is_async=False,
        ),
        Case(
            "LangGraph",
            "ainvoke(), AsyncSqliteSaver, fresh file per round",
            "lg_sqlite_async",
            run_async_saved,
            open_async,
            close_async,
        ),
        Case(
            "LangGraph",
            "(info) invoke(), SqliteSaver, durability='exit'",
            "lg_sqlite_exit",
            run_saved("x", "exit"),
            open_saver("x"),
            close_saver("x"),
            is_async=False,
        ),
    ]


# -- Pydantic AI side -------------------------------------------------------------


def pydantic_ai_parts() -> Any:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    def answer(args: str) -> Callable[[list[Any], AgentInfo], ModelResponse]:
        def respond(messages: list[Any], info: AgentInfo) -> ModelResponse:
            return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, args)])

        return respond

    instant = FunctionModel(answer(ANSWER_JSON))
    chain = [Agent(instant, output_type=Msg, instructions=instructions(i)) for i in range(STEPS)]

    respond = answer(ANSWER_JSON)

    async def sleepy(messages: list[Any], info: AgentInfo) -> ModelResponse:
        await asyncio.sleep(FAN_DELAY_S)
        return respond(messages, info)

    branch = Agent(FunctionModel(sleepy), output_type=Msg, instructions="branch")
    merge = Agent(
        FunctionModel(answer(json.dumps({"n": BRANCHES}))),
        output_type=Merged,
        instructions="Merge the branches.",
    )
    return chain, branch, merge


def pydantic_ai_chain_cases(parts: Any, runner: asyncio.Runner) -> list[Case]:
    chain, _, _ = parts

    async def run_chain(i: int) -> Msg:
        msg = START_MSG
        for agent in chain:
            msg = (await agent.run(msg.model_dump_json())).output
        return msg

    assert runner.run(run_chain(0)) == Msg(**ANSWER)
    return [
        Case(
            "Pydantic AI", f"{STEPS} sequential Agent.run(), FunctionModel", "pai_plain", run_chain
        )
    ]


def section_chain(s: Settings, tmp: Path, report: Report, peers: dict[str, Any]) -> None:
    with asyncio.Runner() as runner:
        cases = tm_chain_cases(tmp, runner)
        if "langgraph" in peers:
            cases += langgraph_chain_cases(tmp, peers["langgraph"], runner)
        if "pydantic_ai" in peers:
            cases += pydantic_ai_chain_cases(peers["pydantic_ai"], runner)
        measure(cases, s.chain_rounds, s.chain_warmup, s.chunks, runner)
    base = None
    for case in cases:
        med, p90 = summary(case.samples)
        report.values[case.key] = med / STEPS
        if case.key == "tm_plain":
            base = med / STEPS
        report.chain.append(
            {
                "framework": case.framework,
                "config": case.label,
                "step_us": med / STEPS * 1e6,
                "p90_us": p90 / STEPS * 1e6,
                "run_ms": med * 1e3,
                "vs_tm": None if base is None else med / STEPS / base,
            }
        )


# -- section 2: fan-out -----------------------------------------------------------


def fanout_cases(tmp: Path, peers: dict[str, Any], runner: asyncio.Runner) -> list[Case]:
    async def bare(i: int) -> None:
        await asyncio.gather(*(asyncio.sleep(FAN_DELAY_S) for _ in range(BRANCHES)))

    instant = tm_fanout(delay=0.0)
    flow = tm_fanout()
    result = runner.run(tm.arun(flow, START_MSG))
    assert result.output.n == BRANCHES and not result.output.conflicts

    async def cpu_only(i: int) -> None:
        await tm.arun(instant, START_MSG)

    async def plain(i: int) -> None:
        await tm.arun(flow, START_MSG)

    journals: dict[int, Any] = {}

    async def new_sqlite(i: int) -> None:
        journals[i] = tm.SQLiteJournal(tmp / f"tm-fan-{i}.db")

    async def journaled(i: int) -> None:
        await tm.arun(flow, START_MSG, journal=journals[i])

    async def cpu_journaled(i: int) -> None:
        await tm.arun(instant, START_MSG, journal=journals[i])

    async def drop(i: int) -> None:
        journals.pop(i).close()

    cases = [
        Case("(asyncio)", "gather of 100 sleep(0.05), no framework", "fan_floor", bare),
        Case("typedmesh", "(info) parallel(), model answers at once: CPU", "fan_cpu", cpu_only),
        Case(
            "typedmesh",
            "(info) the same, tm.SQLiteJournal: CPU + commits",
            "fan_cpu_sqlite",
            cpu_journaled,
            new_sqlite,
            drop,
        ),
        Case("typedmesh", "parallel(), no journal", "fan_tm", plain),
        Case(
            "typedmesh",
            "parallel(), tm.SQLiteJournal, fresh file per round",
            "fan_tm_sqlite",
            journaled,
            new_sqlite,
            drop,
        ),
    ]
    if "langgraph" in peers:
        graph = peers["langgraph"][1]()
        state = runner.run(graph.ainvoke({"msg": START_MSG}))
        assert len(state["results"]) == BRANCHES, len(state["results"])

        async def lg(i: int) -> None:
            await graph.ainvoke({"msg": START_MSG})

        cases.append(Case("LangGraph", "Send() x100 then a join node, ainvoke()", "fan_lg", lg))
    if "pydantic_ai" in peers:
        _, branch, merge = peers["pydantic_ai"]

        async def pai(i: int) -> None:
            prompt = START_MSG.model_dump_json()
            results = await asyncio.gather(*(branch.run(prompt) for _ in range(BRANCHES)))
            listing = json.dumps([r.output.model_dump() for r in results])
            await merge.run(listing)

        cases.append(
            Case("Pydantic AI", "asyncio.gather of 100 Agent.run(), then merge", "fan_pai", pai)
        )
    return cases


def section_fanout(s: Settings, tmp: Path, report: Report, peers: dict[str, Any]) -> None:
    with asyncio.Runner() as runner:
        cases = fanout_cases(tmp, peers, runner)
        measure(cases, s.fan_rounds, 1, s.fan_rounds, runner)
    floor = statistics.median(cases[0].samples)  # the bare asyncio gather, measured
    for case in cases:
        med = statistics.median(case.samples)
        report.values[case.key] = med
        cpu = case.key.startswith("fan_cpu")
        report.fanout.append(
            {
                "framework": case.framework,
                "config": case.label,
                "wall_ms": med * 1e3,
                "min_ms": min(case.samples) * 1e3,
                "max_ms": max(case.samples) * 1e3,
                "floor": None if cpu else med / floor,
                "nominal": None if cpu else med / FAN_DELAY_S,
            }
        )


# -- section 3: journal append throughput -----------------------------------------


Emitted = tuple[str, str, dict[str, Any], str, dict[str, str], dict[str, list[str]] | None]


def realistic_events(n: int) -> list[Emitted]:
    """(type, path, payload, key, raw, parts) shaped as a chain's model.request and
    model.response events are emitted by the runtime: the request's messages as
    ``parts`` (one blob each, stored once), the rest of the request and the response
    as ``raw`` pydantic JSON spliced into the payload."""
    messages = [
        tm.Message(role="system", content=instructions(3)).model_dump_json(),
        tm.Message(role="user", content=START_MSG.model_dump_json()).model_dump_json(),
    ]
    rest = tm.ModelRequest(
        messages=[], output_schema=Msg.model_json_schema(), output_name="Msg"
    ).model_dump_json(exclude={"messages"})
    response = tm.ModelResponse(
        content=ANSWER_JSON,
        model="gpt-4o-mini",
        usage=tm.Usage(input_tokens=60, output_tokens=16, model_calls=1),
    ).model_dump_json()
    request_digest = "sha256:" + "ab" * 32
    usage = {"input_tokens": 60, "output_tokens": 16, "cost_usd": 0.0}
    events: list[Emitted] = []
    for i in range(n):
        path = f"chain/step{(i // 2) % STEPS}"
        key = f"{path}/model#{i // (2 * STEPS)}"
        if i % 2 == 0:
            payload = {"request_digest": request_digest, "model": "gpt-4o-mini"}
            events.append(
                ("model.request", path, payload, key, {"request": rest}, {"messages": messages})
            )
        else:
            payload = {"usage": usage, "served_model": "gpt-4o-mini"}
            events.append(("model.response", path, payload, key, {"response": response}, None))
    return events


class Collect:
    """An EventSink that keeps what it is handed (to append it later, prebuilt)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.blobs: dict[str, bytes] = {}

    def accept(self, event: Event, blobs: Any) -> None:
        self.events.append(event)
        self.blobs.update(blobs)


def emit_all(log: EventLog, events: list[Emitted]) -> None:
    agent = {"name": "step3", "version": "0.1.0", "deployment": "local"}
    span, parent = "0123456789abcdef", "fedcba9876543210"
    emit = log.emit
    for type_, path, payload, key, raw, parts in events:
        emit(
            type_,
            path,
            payload,
            key=key,
            span_id=span,
            parent_span_id=parent,
            agent=agent,
            raw=raw,
            parts=parts,
        )


def append_end_to_end(journal: tm.Journal, events: list[Emitted], batch: int = BATCH) -> float:
    """EventLog.emit into a JournalSink on ``journal`` (lease taken outside the clock),
    appending every ``batch`` events, then the last flush."""
    lease = journal.create_run("bench-run", new_owner())
    sink = JournalSink(journal, lease, batch_size=batch)
    log = EventLog("bench-run", sinks=[sink])
    start = time.perf_counter()
    emit_all(log, events)
    sink.flush()
    return time.perf_counter() - start


def raw_insert(path: Path, schema: list[str], rows: list[tuple[Any, ...]]) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in schema:
        db.execute(statement)
    marks = ", ".join("?" * len(rows[0]))
    sql = f"INSERT INTO events VALUES ({marks})"
    start = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        db.execute("BEGIN")
        db.executemany(sql, rows[i : i + BATCH])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def section_journal(s: Settings, tmp: Path, report: Report) -> None:
    events = realistic_events(s.events)
    n = len(events)
    small = events[: max(200, n // 10)]  # the commit-per-event rows are slow: fewer events
    tm_times, raw_times, emit_times, append_times, commit_times = [], [], [], [], []
    for r in range(s.append_repeats):
        db_path = tmp / f"append-tm-{r}.db"
        with tm.SQLiteJournal(db_path) as journal:
            tm_times.append(append_end_to_end(journal, events))
        # the same rows, the same table shape, the same PRAGMAs and batch size
        src = sqlite3.connect(db_path)
        rows = src.execute("SELECT * FROM events ORDER BY seq").fetchall()
        schema = [
            sql
            for (sql,) in src.execute(
                "SELECT sql FROM sqlite_master WHERE tbl_name = 'events' AND sql IS NOT NULL"
            )
        ]
        src.close()
        assert len(rows) == n
        raw_times.append(raw_insert(tmp / f"append-raw-{r}.db", schema, rows))
        # part 1: EventLog.emit alone (sequence, hash chain, blobs, splicing)
        collect = Collect()
        log = EventLog("bench-run", sinks=[collect])
        start = time.perf_counter()
        emit_all(log, events)
        emit_times.append(time.perf_counter() - start)
        # part 2: SQLiteJournal.append of those prebuilt Events, in the same batches
        with tm.SQLiteJournal(tmp / f"append-write-{r}.db") as journal:
            lease = journal.create_run("bench-run", new_owner())
            built, blobs = collect.events, collect.blobs
            start = time.perf_counter()
            for i in range(0, n, BATCH):
                lease = journal.append(lease, built[i : i + BATCH], blobs if i == 0 else {})
            append_times.append(time.perf_counter() - start)
        # (info) one append per event pair, as a chain commits every model response
        with tm.SQLiteJournal(tmp / f"append-commit-{r}.db") as journal:
            commit_times.append(append_end_to_end(journal, small, batch=2))
    raw_rate = n / statistics.median(raw_times)
    for label, times, count, key in (
        ("typedmesh EventLog.emit + JournalSink + SQLiteJournal", tm_times, n, "append_tm"),
        ("raw sqlite3 executemany, prebuilt rows", raw_times, n, "append_raw"),
        ("  part: EventLog.emit alone (chain, blobs, JSON)", emit_times, n, "append_emit"),
        ("  part: SQLiteJournal.append of prebuilt Events", append_times, n, "append_write"),
        (
            "(info) end to end, one append per 2 events (a chain's commits)",
            commit_times,
            len(small),
            "append_commit",
        ),
    ):
        rate = count / statistics.median(times)
        report.values[key] = rate
        report.journal.append(
            {
                "config": label,
                "rate": rate,
                "us_per_event": 1e6 / rate,
                "vs_raw": rate / raw_rate,
            }
        )


# -- section 4: cold import -------------------------------------------------------

IMPORT_PROBE = """
import json, sys, time
t = time.perf_counter()
import {module}
dt = time.perf_counter() - t
watch = ("openai", "anthropic", "httpx", "langchain_core", "langgraph", "pydantic_ai")
print(json.dumps({{"dt": dt, "loaded": [m for m in watch if m in sys.modules]}}))
"""


def import_env(cache: Path) -> dict[str, str]:
    """Bytecode cached under ``cache`` (never in the source tree), as an installed
    package has it: PYTHONDONTWRITEBYTECODE would otherwise recompile stale modules."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def time_import(module: str, runs: int, env: dict[str, str]) -> dict[str, Any] | None:
    code = IMPORT_PROBE.format(module=module)
    for _ in range(2):  # fill the bytecode cache
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=False, env=env)
    inner, outer, loaded = [], [], []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        outer.append(time.perf_counter() - start)
        if done.returncode != 0:
            return None
        data = json.loads(done.stdout.strip().splitlines()[-1])
        inner.append(data["dt"])
        loaded = data["loaded"]
    return {
        "import_s": statistics.median(inner),
        "process_s": statistics.median(outer),
        "loaded": loaded,
    }


def heaviest_imports(module: str, env: dict[str, str], top: int = 8) -> list[tuple[str, float]]:
    """The slowest imports under ``module`` (two levels deep) by -X importtime cumulative."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        env=env,
    )
    found: list[tuple[str, float]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line.split("|")
        try:
            cumulative = int(parts[1].strip()) / 1e6
        except ValueError:
            continue
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip())) // 2
        if 1 <= depth <= 2:
            found.append((name.strip(), cumulative))
    found.sort(key=lambda x: -x[1])
    return found[:top]


def section_import(s: Settings, tmp: Path, report: Report, peers: dict[str, Any]) -> None:
    env = import_env(tmp / "pycache")
    python = time_import("sys", s.import_runs, env)
    baseline = python["process_s"] if python else 0.0
    modules = [("pydantic.main, asyncio, sqlite3", "(its deps)"), ("typedmesh", "typedmesh")]
    if "langgraph" in peers:
        modules.append(("langgraph.graph", "LangGraph"))
    if "pydantic_ai" in peers:
        modules.append(("pydantic_ai", "Pydantic AI"))
    for module, framework in modules:
        found = time_import(module, s.import_runs, env)
        if found is None:
            report.notes.append(f"import {module} failed in a subprocess")
            continue
        if module == "typedmesh":
            report.values["import_tm"] = found["import_s"]
            report.values["import_tm_sdks"] = float(
                bool({"openai", "anthropic"} & set(found["loaded"]))
            )
        report.imports.append(
            {
                "framework": framework,
                "module": f"import {module}",
                "import_ms": found["import_s"] * 1e3,
                "process_ms": found["process_s"] * 1e3,
                "startup_ms": baseline * 1e3,
                "loaded": ", ".join(found["loaded"]) or "none",
            }
        )
    installed = [m for m in ("openai", "anthropic") if _installed(m)]
    report.notes.append(
        "provider SDKs installed in this venv (so the 'loaded' check means something): "
        + (", ".join(installed) if installed else "none: the check is vacuous, rerun setup.sh")
    )
    report.notes.append(
        "heaviest imports under typedmesh (-X importtime, cumulative): "
        + ", ".join(
            f"{name} {t * 1e3:.0f} ms" for name, t in heaviest_imports("typedmesh", env)[:6]
        )
    )


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# -- profile ----------------------------------------------------------------------


async def _profiled_runs(
    flow: tm.Step[Msg, Any],
    journal_kind: str | None,
    rounds: int,
    files: Path,
    profiler: cProfile.Profile | None,
) -> None:
    """``rounds`` runs of ``flow``; only ``tm.arun`` is inside the profiler."""
    for i in range(rounds):
        journal: Any = None
        if journal_kind == "file":
            journal = tm.SQLiteJournal(files.with_name(f"{files.name}-{i}.db"))
        elif journal_kind == "path":
            journal = str(files.with_name(f"{files.name}-runs.db"))
        if profiler is not None:
            profiler.enable()
        await tm.arun(flow, START_MSG, journal=journal)
        if profiler is not None:
            profiler.disable()
        if isinstance(journal, tm.Journal):
            journal.close()


def _profile_row(func: Any, data: Any, rounds: int, total: float) -> list[str]:
    where = "(builtin)" if func[0] == "~" else f"{Path(func[0]).parent.name}/"
    where += "" if func[0] == "~" else f"{Path(func[0]).name}:{func[1]}"
    per_run = 1e6 / rounds
    return [
        where,
        func[2][:60],
        f"{data[1] / rounds:.0f}",
        f"{data[3] * per_run:,.0f}",
        f"{data[2] * per_run:,.0f}",
        f"{data[3] / total * 100:.1f}",
        f"{data[2] / total * 100:.1f}",
    ]


PROFILES = ("chain", "sqlite", "path", "fanout", "fanout-sqlite")


def profile_typedmesh(s: Settings, tmp: Path, which: set[str]) -> None:
    """cProfile of ``tm.arun`` alone (journal open and close stay outside the profiler).

    ``which``: chain (no journal), sqlite (a fresh SQLiteJournal file per run), path
    (``journal="runs.db"``), fanout (the 100-branch flow with an instant model, so the
    profile is the framework's CPU and not the sleeps), fanout-sqlite (the same,
    journaled)."""
    chain = tm_chain()
    fan = tm_fanout(delay=0.0)
    fan_rounds = max(3, s.profile_rounds // 10)
    scenarios = {
        "chain": (chain, "10-step chain, no journal", None, s.profile_rounds),
        "sqlite": (chain, "10-step chain, fresh tm.SQLiteJournal", "file", s.profile_rounds),
        "path": (chain, '10-step chain, journal="runs.db"', "path", s.profile_rounds),
        "fanout": (fan, "fan-out of 100, instant model, no journal", None, fan_rounds),
        "fanout-sqlite": (fan, "fan-out of 100, instant model, SQLite", "file", fan_rounds),
    }
    columns = ["file:line", "function", "calls/run", "cum us", "own us", "cum %", "own %"]
    for name, (flow, label, journal_kind, rounds) in scenarios.items():
        if name not in which:
            continue
        asyncio.run(_profiled_runs(flow, journal_kind, rounds, tmp / f"warm-{name}", None))
        profiler = cProfile.Profile()
        asyncio.run(_profiled_runs(flow, journal_kind, rounds, tmp / f"prof-{name}", profiler))
        raw: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        total = sum(data[2] for data in raw.values()) or 1.0
        mine = [
            (func, data)
            for func, data in raw.items()
            if f"{os.sep}typedmesh{os.sep}" in func[0] and "benchmarks" not in func[0]
        ]
        mine.sort(key=lambda item: -item[1][3])
        print_table(
            f"cProfile: {label} - {total * 1e6 / rounds:,.0f} us per run under the profiler "
            f"({rounds} runs) - top 18 typedmesh functions by cumulative time",
            columns,
            [_profile_row(func, data, rounds, total) for func, data in mine[:18]],
        )
        anywhere = sorted(raw.items(), key=lambda item: -item[1][2])[:15]
        print_table(
            f"  ... {label}: top 15 functions anywhere by own time",
            columns,
            [_profile_row(func, data, rounds, total) for func, data in anywhere],
        )


# -- main -------------------------------------------------------------------------


def load_peers(report: Report) -> dict[str, Any]:
    peers: dict[str, Any] = {}
    try:
        import langgraph.checkpoint.sqlite  # noqa: F401

        peers["langgraph"] = langgraph_parts()
    except ImportError as exc:
        report.notes.append(
            f"LangGraph rows skipped ({exc}): run `bash benchmarks/setup.sh` to install "
            "langgraph, langgraph-checkpoint-sqlite and langchain-core"
        )
    try:
        peers["pydantic_ai"] = pydantic_ai_parts()
    except ImportError as exc:
        report.notes.append(
            f"Pydantic AI rows skipped ({exc}): run `bash benchmarks/setup.sh` to install "
            "pydantic-ai-slim"
        )
    for note in report.notes:
        print(f"NOTE: {note}", file=sys.stderr)
    return peers


def versions() -> str:
    names = ["typedmesh", "pydantic", "langgraph", "langgraph-checkpoint-sqlite"]
    names += ["langchain-core", "pydantic-ai-slim"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (missing)")
    return ", ".join(found)


def filesystem(path: Path) -> str:
    """The filesystem type that holds ``path`` (fsync cost depends on it)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    best, kind = "", "unknown"
    for line in mounts:
        fields = line.split()
        if len(fields) > 2 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind


def source_state() -> str:
    """The commit measured, and whether src/ had uncommitted edits (read-only git)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "source: not a git checkout"
    return f"source: commit {head}" + (" + uncommitted edits in src/" if dirty else "")


def load() -> str:
    """The load average (1, 5, 15 min): other work on the machine skews every row."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def print_report(report: Report, peers: dict[str, Any]) -> None:
    v = report.values
    if report.chain:
        print_table(
            f"1. Per-step overhead: {STEPS}-step chain of structured-output agents, instant "
            "model (median of runs / 10)",
            ["framework", "configuration", "step us", "p90 us", "run ms", "x typedmesh"],
            [
                [
                    r["framework"],
                    r["config"],
                    fmt(r["step_us"]),
                    fmt(r["p90_us"]),
                    fmt(r["run_ms"], 2),
                    fmt(r["vs_tm"], 2),
                ]
                for r in report.chain
            ],
        )
    if report.fanout:
        print_table(
            f"2. Fan-out: {BRANCHES} branches whose model sleeps {FAN_DELAY_S * 1e3:.0f} ms, "
            "then a merge",
            ["framework", "configuration", "wall ms", "min ms", "max ms", "x floor", "x 50 ms"],
            [
                [
                    r["framework"],
                    r["config"],
                    fmt(r["wall_ms"]),
                    fmt(r["min_ms"]),
                    fmt(r["max_ms"]),
                    fmt(r["floor"], 3),
                    fmt(r["nominal"], 2),
                ]
                for r in report.fanout
            ],
        )
    if report.journal:
        print_table(
            f"3. Journal append: realistic model.request/response events, batches of {BATCH}, "
            "WAL + synchronous=NORMAL",
            ["writer", "", "events/s", "us/event", "x raw"],
            [
                [r["config"], "", fmt(r["rate"], 0), fmt(r["us_per_event"], 2), fmt(r["vs_raw"], 2)]
                for r in report.journal
            ],
        )
    if report.imports:
        print_table(
            "4. Cold import (fresh interpreter, bytecode cached, median)",
            ["framework", "statement", "import ms", "process ms", "python -c ms", "loaded"],
            [
                [
                    r["framework"],
                    r["module"],
                    fmt(r["import_ms"]),
                    fmt(r["process_ms"]),
                    fmt(r["startup_ms"]),
                    r["loaded"],
                ]
                for r in report.imports
            ],
        )

    rows = []

    def target(name: str, measured: str, goal: str, ok: bool | None) -> None:
        rows.append([name, measured, goal, verdict(ok)])

    def us(key: str) -> str:
        return f"{v[key] * 1e6:,.1f} us"

    lg_sqlite = min((v[k] for k in ("lg_sqlite_sync", "lg_sqlite_async") if k in v), default=None)
    lg_plain = min((v[k] for k in ("lg_plain_sync", "lg_plain_async") if k in v), default=None)
    if "tm_sqlite" in v:
        ratio = None if lg_sqlite is None else v["tm_sqlite"] / lg_sqlite
        target(
            "SQLite-journaled step (every response committed) vs LangGraph + SqliteSaver",
            f"{us('tm_sqlite')} / {fmt(lg_sqlite and lg_sqlite * 1e6)} us = {fmt(ratio, 3)}",
            f"<= {TARGET_SQLITE_STEP:.3f}",
            None if ratio is None else ratio <= TARGET_SQLITE_STEP,
        )
    if "tm_sqlite_path" in v and "tm_sqlite_open" in v:
        ratio = v["tm_sqlite_path"] / v["tm_sqlite_open"]
        target(
            'journal="runs.db" (a path) vs an open SQLiteJournal passed in',
            f"{us('tm_sqlite_path')} / {us('tm_sqlite_open')} = {ratio:.3f}x",
            f"<= {TARGET_PATH:.2f}x",
            ratio <= TARGET_PATH,
        )
    for key, label in (("fan_tm", "no journal"), ("fan_tm_sqlite", "SQLite journal")):
        if key in v and "fan_floor" in v:
            ratio = v[key] / v["fan_floor"]
            target(
                f"fan-out 100 x 50 ms, {label}: wall / bare asyncio gather",
                f"{v[key] * 1e3:,.1f} / {v['fan_floor'] * 1e3:,.1f} ms = {ratio:.3f}x",
                f"<= {TARGET_FANOUT:.2f}x",
                ratio <= TARGET_FANOUT,
            )
    if "import_tm" in v:
        target(
            "cold `import typedmesh`",
            f"{v['import_tm']:.3f} s",
            f"< {TARGET_IMPORT_S:.2f} s",
            v["import_tm"] < TARGET_IMPORT_S,
        )
        target(
            "`import typedmesh` loads no provider SDK (openai, anthropic)",
            "loaded" if v["import_tm_sdks"] else "not loaded",
            "not loaded",
            not v["import_tm_sdks"],
        )
    if "tm_plain" in v:
        ratio = None if lg_plain is None else v["tm_plain"] / lg_plain
        target(
            "un-journaled step vs LangGraph without checkpointer (its faster API)",
            f"{us('tm_plain')} / {fmt(lg_plain and lg_plain * 1e6)} us = {fmt(ratio, 3)}",
            f"<= {TARGET_PLAIN_STEP:.3f}",
            None if ratio is None else ratio <= TARGET_PLAIN_STEP,
        )
    if "append_tm" in v:
        ratio = v["append_tm"] / v["append_raw"]
        target(
            "journal append rate vs raw sqlite3 executemany",
            f"{v['append_tm']:,.0f} / {v['append_raw']:,.0f} ev/s = {ratio:.3f}",
            f">= {TARGET_APPEND:.2f}",
            ratio >= TARGET_APPEND,
        )
    if "tm_plain" in v and "pai_plain" in v:
        ratio = v["tm_plain"] / v["pai_plain"]
        target(
            "(info) un-journaled step vs Pydantic AI",
            f"{us('tm_plain')} / {us('pai_plain')} = {ratio:.3f}",
            "-",
            None,
        )
    if "tm_sqlite" in v and "lg_sqlite_exit" in v:
        ratio = v["tm_sqlite"] / v["lg_sqlite_exit"]
        target(
            "(info) SQLite-journaled step vs LangGraph SqliteSaver, durability='exit'",
            f"{us('tm_sqlite')} / {us('lg_sqlite_exit')} = {ratio:.3f}",
            "-",
            None,
        )
    if rows:
        print_table(
            f"Targets (load average {load()} now)",
            ["measure", "result", "target", "PASS/FAIL"],
            rows,
        )
    for note in report.notes:
        print(f"note: {note}")
    print(f"note: load average at the end {load()} on {os.cpu_count()} cores")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fast smoke run")
    parser.add_argument(
        "--only",
        default="chain,fanout,journal,import",
        help="comma-separated sections: chain, fanout, journal, import",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const=",".join(PROFILES),
        default="",
        help=f"cProfile the typedmesh side: {', '.join(PROFILES)} (no value: all)",
    )
    parser.add_argument("--plain", action="store_true", help="plain-text tables (no rich)")
    args = parser.parse_args(argv)
    global PLAIN
    PLAIN = args.plain
    settings = QUICK if args.quick else FULL
    sections = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = sections - {"chain", "fanout", "journal", "import"}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    profiles = {part.strip() for part in args.profile.split(",") if part.strip()}
    unknown = profiles - set(PROFILES)
    if unknown:
        parser.error(f"unknown profile(s): {', '.join(sorted(unknown))}")

    expected = Path(__file__).resolve().parent / ".venv"
    if Path(sys.prefix).resolve() != expected.resolve():
        print(
            f"NOTE: running in {sys.prefix}, not {expected}; "
            "`bash benchmarks/setup.sh` makes the intended venv",
            file=sys.stderr,
        )
    report = Report()
    peers = load_peers(report)
    tmp = Path(tempfile.mkdtemp(prefix="typedmesh-bench-"))
    print(
        f"typedmesh overhead benchmark - {datetime.now(UTC):%Y-%m-%d %H:%M} UTC - "
        f"{'quick' if args.quick else 'full'} mode\n"
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"tmp dir {tmp} ({filesystem(tmp)}); load average {load()}\n{versions()}\n"
        f"{source_state()}"
    )
    try:
        if "chain" in sections:
            section_chain(settings, tmp, report, peers)
            report.notes.append(f"load average after the chain section: {load()}")
        if "fanout" in sections:
            section_fanout(settings, tmp, report, peers)
            report.notes.append(f"load average after the fan-out section: {load()}")
        if "journal" in sections:
            section_journal(settings, tmp, report)
            report.notes.append(f"load average after the journal section: {load()}")
        if "import" in sections:
            section_import(settings, tmp, report, peers)
            report.notes.append(f"load average after the import section: {load()}")
        print_report(report, peers)
        if profiles:
            profile_typedmesh(settings, tmp, profiles)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
