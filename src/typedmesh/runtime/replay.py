"""Resume and replay: the runtime again, with effects served from a journal."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from ..contracts import Intent
from ..errors import (
    ConfigurationError,
    ContractError,
    InDoubtError,
    JournalCorrupt,
    NonDeterminismError,
)
from ..handoff import handoff_problems
from ..journal import DEFAULT_JOURNAL, open_journal
from ..journal.base import DEFAULT_LEASE_TTL, Journal, new_owner
from ..journal.events import Event, canonical_json, digest
from ..journal.sqlite import Durability
from ..journal.verify import load_payload, read_verified
from ..journal.writer import JournalSink
from ..models.base import ModelSettings
from ..state import StateStore, open_store
from ..step import Step
from .budget import Budget
from .context import RunState
from .deps import check_deps
from .effects import Effects, index_events
from .history import History, load_history
from .kinds import InDoubtPolicy
from .reducer import reduce_events
from .run import RunResult, attach_journal, coerce_input, drive, journal_label, run_sync
from .trace import TraceNode

__all__ = ["FieldChange", "ReplayResult", "areplay", "aresume", "replay", "resume"]

Out = TypeVar("Out", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field of the final output that a what-if replay changed."""

    path: str
    before: Any
    after: Any


@dataclass(slots=True)
class ReplayResult(Generic[Out]):
    """A replay's output, and how it compares with the recorded run."""

    run_id: str
    output: Out
    recorded_output: Any
    identical: bool
    output_digest: str
    recorded_digest: str | None
    served: int
    executed: int
    trace: TraceNode
    changes: list[FieldChange] = field(default_factory=list)
    swapped: list[str] = field(default_factory=list)


def verified_events(store: Journal, run_id: str) -> list[Event]:
    """A run's events, refused unless chain, blobs, anchored head and signature check out."""
    events = read_verified(store, run_id)  # RunNotFound: the run was never registered
    if events[0].type != "run.started":
        raise JournalCorrupt(f"run {run_id!r} does not begin with run.started", run_id=run_id)
    return events


def _settings(
    flow: Step[Any, Any], started: Event, store: Journal
) -> tuple[BaseModel, Intent | None, Budget | None, frozenset[str] | None]:
    payload = started.payload
    if payload.get("flow") != flow.name:
        raise ConfigurationError(
            f"run {started.run_id!r} was made by flow {payload.get('flow')!r}, not {flow.name!r}"
        )
    validated = coerce_input(flow, load_payload(started, store, "input"))
    intent_data = load_payload(started, store, "intent")
    intent = Intent.model_validate(intent_data) if intent_data else None
    budget = Budget(**payload["budget"]) if payload.get("budget") else None
    grant = frozenset(payload["grant"]) if payload.get("grant") is not None else None
    return validated, intent, budget, grant


def _recorded_extras(
    flow: Step[Any, Any],
    started: Event,
    store: Journal,
    deps: Any,
    mode: Literal["resume", "replay"],
) -> tuple[ModelSettings | None, History | None]:
    """The run's recorded model settings and session history; its deps checked
    against the deps type it recorded (``DepsError`` before anything runs)."""
    payload = started.payload
    check_deps(flow, deps, mode=mode, recorded=payload.get("deps_type"))
    settings = payload.get("model_settings")
    session = payload.get("session")
    return (
        ModelSettings.model_validate(settings) if settings else None,
        load_history(store, session) if session else None,
    )


async def aresume(
    run_id: str,
    flow: Step[Any, Out],
    *,
    journal: str | Path | Journal = DEFAULT_JOURNAL,
    in_doubt: InDoubtPolicy = "fail",
    budget: Budget | None = None,
    deadline: float | None = None,
    durability: Durability = "normal",
    lease_ttl: float = DEFAULT_LEASE_TTL,
    state: StateStore | str | Path | None = None,
    deps: Any = None,
) -> RunResult[Out]:
    """Continue a run from its journal without repeating any journaled effect.

    The run is taken under a lease first: while another live process owns
    it, ``LeaseHeld`` is raised before anything runs. Finished steps return
    their recorded outputs; journaled model and tool calls return their
    recorded results; the rest runs live and is journaled. A non-idempotent
    tool call that started but never reported is in doubt: ``in_doubt="fail"``
    raises ``InDoubtError`` before anything is written, ``"retry"`` runs it
    again with the same idempotency key, ``"skip"`` records it as failed and
    tells the agent. ``budget`` replaces the recorded budget (it covers the
    whole run, what was spent before included). ``state`` is the shared
    state store (default: the one the run recorded, reopened from its URL;
    state writes journaled as applied are never applied again). A finished
    run returns its recorded output; a tampered or truncated journal is refused.
    ``deps`` are given again (they are not journaled): a run that had deps
    needs deps of the type it recorded (``DepsError`` otherwise). The model
    settings and a session turn's history are the recorded ones.
    """
    _check_run_args("resume", run_id, flow)
    store = open_journal(journal, must_exist=True, durability=durability)
    before = store.head(run_id)  # its status stays if this resume is refused
    status = before.status if before.status != "running" else "incomplete"
    lease = store.acquire(run_id, new_owner(), ttl=lease_ttl)
    sink = JournalSink(store, lease, ttl=lease_ttl)
    try:
        events = verified_events(store, run_id)
        index = index_events(events, store)
        validated, intent, recorded_budget, grant = _settings(flow, events[0], store)
        if in_doubt == "fail":
            for key, rec in index.in_doubt():
                started = rec.started or {}
                if rec.kind.name == "tool" and not started.get("idempotent", True):
                    raise InDoubtError(key, tool=str(started.get("tool", "")))
        if events[-1].type == "run.finished":
            sink.release("finished")
            return _finished_result(flow, events, store, intent, journal)
        settings, history = _recorded_extras(flow, events[0], store, deps, "resume")
    except BaseException:
        store.release(lease, status)
        raise
    run_state = RunState(
        run_id=run_id,
        intent=intent,
        budget=budget or recorded_budget,
        grant=grant,
        completed=index.completed,
        effects=Effects(recorded=index.effects, mode="resume", in_doubt=in_doubt),
        store=_state_store(state, events[0]),
        deps=deps,
        model_settings=settings,
        history=history,
    )
    run_state.log.seq, run_state.log.prev_hash = len(events), events[-1].hash
    run_state.reducer.journal = store
    for event in events:  # the trace and usage so far: the reducer sees the whole run
        run_state.reducer.add(event)
    attach_journal(run_state, store, sink)
    resumed = {
        "after_event": len(events) - 1,
        "in_doubt": in_doubt,
        "budget": None if budget is None else budget.to_dict(),
    }
    return await drive(
        flow,
        validated,
        run_state,
        intent,
        ("run.resumed", resumed),
        journal_label(journal),
        deadline,
    )


def _state_store(state: StateStore | str | Path | None, started: Event) -> StateStore | None:
    """The store a resumed run works on: the one given, else the one it recorded."""
    if state is not None:
        return open_store(state)
    recorded = started.payload.get("state_store")
    if not recorded or recorded == "memory:":
        return None  # an in-memory store is gone with its process: ctx.state says so
    return open_store(str(recorded))


def _finished_result(
    flow: Step[Any, Out], events: list[Event], store: Journal, intent: Intent | None, journal: Any
) -> RunResult[Out]:
    reducer = reduce_events(events, store)
    root = reducer.finish(events[-1])
    output = flow.output_type.model_validate(load_payload(events[-1], store, "output"))
    return RunResult(
        output=output,
        run_id=events[0].run_id,
        usage=reducer.usage,
        cost_usd=reducer.usage.cost_usd,
        trace=root,
        intent=intent,
        journal=journal_label(journal),
    )


def _check_swap(flow: Step[Any, Any], name: str, new: Step[Any, Any]) -> None:
    old = next((s for s in flow.walk() if s.name == name), None)
    if old is None:
        raise ConfigurationError(f"--swap: the flow has no step named {name!r}")
    problems = handoff_problems(old.input_type, new.input_type)
    problems += handoff_problems(new.output_type, old.output_type)
    if problems:
        raise ContractError(
            f"swap {name!r}: the new step's contract does not fit the old one",
            source=name,
            target=new.name,
            problems=problems,
        )


async def areplay(
    run_id: str,
    flow: Step[Any, Out],
    *,
    journal: str | Path | Journal = DEFAULT_JOURNAL,
    swap: dict[str, Step[Any, Any]] | None = None,
    state: StateStore | str | Path | None = None,
    deps: Any = None,
) -> ReplayResult[Out]:
    """Re-run a journaled run with every effect served from the journal.

    Strict (no ``swap``): zero live model or tool calls; a missing effect or a
    request that differs from the recorded one raises ``NonDeterminismError``
    naming the effect key. What-if (``swap={"name": new_step}``): the named
    steps run live, as does anything downstream whose request changed; the
    result lists how the final output changed. Nothing is written to the
    journal. A strict replay never touches a state store; in a what-if, the
    swapped steps' state operations run live on ``state`` (give it a scratch
    store, e.g. ``MemoryStateStore()`` seeded from production, not production).
    ``deps`` may be left out when no step reads ``ctx.deps`` itself (tools
    are served from the journal); given, they must be of the recorded type.
    """
    _check_run_args("replay", run_id, flow)
    store = open_journal(journal, readonly=not isinstance(journal, Journal))
    try:
        events = verified_events(store, run_id)
        index = index_events(events, store)
        validated, intent, budget, grant = _settings(flow, events[0], store)
        settings, history = _recorded_extras(flow, events[0], store, deps, "replay")
        for name, new in (swap or {}).items():
            _check_swap(flow, name, new)
        effects = Effects(
            journal=store, recorded=index.effects, mode="whatif" if swap else "replay"
        )
        run_state = RunState(
            run_id=run_id,
            intent=intent,
            budget=budget,
            grant=grant,
            swaps=dict(swap or {}),
            effects=effects,
            store=None if state is None else open_store(state),
            deps=deps,
            model_settings=settings,
            history=history,
        )
        started = dict(events[0].payload)
        result = await drive(flow, validated, run_state, intent, ("run.started", started))
        if not swap:
            never = effects.unconsumed()
            if never:
                rec = index.effects[never[0]]
                raise NonDeterminismError(
                    never[0],
                    expected=effects.recorded_request(rec.kind, rec),
                    actual=f"the replayed flow never made this {rec.kind.name} call "
                    f"({len(never)} recorded effect(s) unused)",
                )
        finished = events[-1] if events[-1].type == "run.finished" else None
        recorded = load_payload(finished, store, "output") if finished else None
        dumped = result.output.model_dump(mode="json")
        new_digest = digest(canonical_json(dumped))
        recorded_digest = finished.payload.get("output_digest") if finished else None
        return ReplayResult(
            run_id=run_id,
            output=result.output,
            recorded_output=recorded,
            identical=new_digest == recorded_digest,
            output_digest=new_digest,
            recorded_digest=recorded_digest,
            served=effects.served,
            executed=effects.executed,
            trace=result.trace,
            changes=diff(recorded, dumped),
            swapped=sorted(swap or {}),
        )
    finally:
        if store is not journal:
            store.close()


def diff(before: Any, after: Any, path: str = "") -> list[FieldChange]:
    """Field-level differences between two JSON values."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[FieldChange] = []
        for key in list(before) + [k for k in after if k not in before]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in after or key not in before or before[key] != after[key]:
                changes += diff(before.get(key), after.get(key), sub)
        return changes
    return [] if before == after else [FieldChange(path or "(root)", before, after)]


def resume(
    run_id: str,
    flow: Step[Any, Out],
    *,
    journal: str | Path | Journal = DEFAULT_JOURNAL,
    in_doubt: InDoubtPolicy = "fail",
    budget: Budget | None = None,
    deadline: float | None = None,
    durability: Durability = "normal",
    state: StateStore | str | Path | None = None,
    deps: Any = None,
) -> RunResult[Out]:
    """Synchronous twin of ``aresume``."""
    return run_sync(
        aresume(
            run_id,
            flow,
            journal=journal,
            in_doubt=in_doubt,
            budget=budget,
            deadline=deadline,
            durability=durability,
            state=state,
            deps=deps,
        )
    )


def replay(
    run_id: str,
    flow: Step[Any, Out],
    *,
    journal: str | Path | Journal = DEFAULT_JOURNAL,
    swap: dict[str, Step[Any, Any]] | None = None,
    state: StateStore | str | Path | None = None,
    deps: Any = None,
) -> ReplayResult[Out]:
    """Synchronous twin of ``areplay``."""
    return run_sync(areplay(run_id, flow, journal=journal, swap=swap, state=state, deps=deps))


def _check_run_args(what: str, run_id: object, flow: object) -> None:
    """``resume``/``replay`` take ``(run_id, flow)``: say so when they come swapped."""
    if isinstance(run_id, str) and isinstance(flow, Step):
        return
    if isinstance(run_id, Step) and isinstance(flow, str):
        raise ConfigurationError(
            f"{what}(run_id, flow): the arguments are swapped; "
            f"call {what}({flow!r}, {run_id.name}, ...)"
        )
    raise ConfigurationError(
        f"{what}(run_id, flow) needs a run id (str) and a Step, "
        f"got {type(run_id).__name__} and {type(flow).__name__}"
    )
