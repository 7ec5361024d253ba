"""Batch runs: one flow over many inputs, each input its own journaled run.

``tm.batch(flow, inputs, concurrency=8, budget=tm.Budget(max_cost_usd=5))``
runs ``flow`` on every input, at most ``concurrency`` at a time, and returns a
``BatchReport``: each item's status (ok, failed with its error type, waiting,
malformed, skipped), tokens and cost, the success rate with a 95% confidence
interval, and usage per agent and per model.

**Resumable.** Item ``i`` of batch ``B`` is the run ``B-0000i`` in the journal.
Running the batch again with the same ``batch_id`` takes finished items from
the journal (nothing runs again), resumes incomplete, failed and waiting ones
with ``aresume`` (no journaled effect repeats: a tool that ran before a kill
does not run again) and starts the rest. An item whose input changed since it
was journaled is refused (give a changed input file a new batch id). Several
processes may run one batch at once: each item runs in one of them, the others
wait for it and report its outcome (``action="elsewhere"``), and one whose
worker died is finished by a process still running.

**One budget.** ``budget`` is shared by all items: every model call reserves
against it before it is sent, so concurrent items cannot together cross it; a
call that would is not made and its item fails with ``BudgetExceeded``; once
it is used up (or has refused a call) no new item starts (those are
``skipped``, and run when the batch is run again with a larger budget). It
covers what the batch's runs spent before, so a re-run continues it.
``item_budget`` limits each run.

**Malformed inputs.** From a JSONL file (``read_inputs``), a line that is not
JSON, not a JSON object, or does not fit the flow's input model is reported
with its line number and skipped; the rest run.

**Provider batches.** ``provider_batch=True`` sends the model calls of OpenAI
and Anthropic models through the provider's batch API (about half the price,
answered within hours, see ``runtime/batch_calls.py``): items submit and
suspend as ``waiting``; the process may exit. Running the batch again (or
``typedmesh resume RUN`` per item) collects the answers once the provider has
them; ``poll_every`` keeps this process collecting until nothing waits.

Progress: ``progress`` is called with a ``BatchProgress`` when the batch
starts, after each item and after each model call (live tokens and cost);
``typedmesh batch`` draws it as a rich progress bar.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from .agent import Agent
from .contracts import Intent, is_text
from .errors import (
    ConfigurationError,
    InputValidationError,
    LeaseHeld,
    RunExists,
    RunNotFound,
    RunWaiting,
)
from .journal import DEFAULT_JOURNAL, describe_journal, open_journal
from .journal.base import DEFAULT_LEASE_TTL, Journal, lease_live, now
from .journal.events import Event, canonical_json
from .journal.sqlite import Durability
from .journal.verify import load_payload
from .models import provider_batch as pb
from .models.base import Usage
from .runtime.batch_calls import RESULT, SUBMIT, BatchMeter, using_meter
from .runtime.batch_calls import provider_batch as batched_model_calls
from .runtime.budget import Budget
from .runtime.effects import index_events
from .runtime.kinds import InDoubtPolicy
from .runtime.reducer import add_usage, reduce_events
from .runtime.replay import aresume
from .runtime.run import arun, coerce_input, run_sync
from .step import Step

if TYPE_CHECKING:
    from .state import StateStore

__all__ = [
    "BatchInput",
    "BatchItem",
    "BatchProgress",
    "BatchReport",
    "abatch",
    "batch",
    "read_inputs",
    "run_id_for",
    "wilson_interval",
]

ItemStatus = Literal["ok", "failed", "waiting", "malformed", "skipped"]
Action = Literal["started", "resumed", "journaled", "checked", "elsewhere", "none"]

_RUN_ENDS = frozenset({"run.finished", "run.failed", "run.suspended"})

_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


@dataclass(slots=True)
class BatchInput:
    """One input of a batch: its value, or why it cannot run.

    ``index`` numbers the items (blank lines of a file are not items);
    ``line`` is its line in the input file (None for inputs given in memory).
    """

    index: int
    value: Any = None
    line: int | None = None
    problem: str | None = None


@dataclass(slots=True)
class BatchItem:
    """What became of one input."""

    index: int
    status: ItemStatus
    line: int | None = None
    run_id: str | None = None
    error_type: str | None = None
    """For failed: the error's type (``OutputValidationError``, ``BudgetExceeded``, ...);
    for malformed: ``InvalidJSON``, ``NotAnObject`` or ``InputValidationError``;
    for skipped: ``BudgetExceeded``."""
    error: str | None = None
    output: Any = None
    """The run's output as JSON, for ok items."""
    usage: Usage = field(default_factory=Usage)
    by_agent: dict[str, Usage] = field(default_factory=dict)
    by_model: dict[str, Usage] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)
    """For waiting items: the effect keys the run waits for."""
    action: Action = "none"
    """What this call did: started the run, resumed it, took it from the journal as it
    was, only checked that its provider batch is still running, or waited while
    another process running the same batch did the item (``elsewhere``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "line": self.line,
            "run_id": self.run_id,
            "status": self.status,
            "error_type": self.error_type,
            "error": self.error,
            "output": self.output,
            "usage": self.usage.model_dump(),
            "by_agent": {k: u.model_dump() for k, u in self.by_agent.items()},
            "waiting": self.waiting,
            "action": self.action,
        }


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a success rate (95% for ``z=1.96``); None for no trials."""
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def _counts(items: Iterable[BatchItem]) -> Counter[str]:
    return Counter(item.status for item in items)


@dataclass(slots=True)
class BatchProgress:
    """Where a batch stands; given to the ``progress`` callback."""

    batch_id: str
    total: int
    done: int
    ok: int
    failed: int
    waiting: int
    skipped: int
    """Malformed inputs and items not started (budget used up)."""
    running: int
    usage: Usage
    """What the batch's runs have spent, including runs of an earlier invocation."""
    item: BatchItem | None = None
    """The item that just ended, if that is why progress was reported."""

    @property
    def success_rate(self) -> float | None:
        decided = self.ok + self.failed
        return self.ok / decided if decided else None


@dataclass(slots=True)
class BatchReport:
    """A batch's outcome: every item, the success rate and what it cost."""

    batch_id: str
    flow: str
    items: list[BatchItem]
    duration_s: float
    journal: str | None = None
    usage: Usage = field(default_factory=Usage)
    by_agent: dict[str, Usage] = field(default_factory=dict)
    by_model: dict[str, Usage] = field(default_factory=dict)

    def of(self, status: ItemStatus) -> list[BatchItem]:
        return [item for item in self.items if item.status == status]

    @property
    def counts(self) -> dict[str, int]:
        found = _counts(self.items)
        return {s: found.get(s, 0) for s in ("ok", "failed", "waiting", "malformed", "skipped")}

    @property
    def success_rate(self) -> float | None:
        """Ok items among those that ran to an end (ok or failed); None when none did."""
        counts = self.counts
        decided = counts["ok"] + counts["failed"]
        return counts["ok"] / decided if decided else None

    @property
    def confidence_interval(self) -> tuple[float, float] | None:
        """95% Wilson interval of ``success_rate``."""
        counts = self.counts
        return wilson_interval(counts["ok"], counts["ok"] + counts["failed"])

    @property
    def errors_by_type(self) -> dict[str, int]:
        """Failed items per error type, most frequent first."""
        found = Counter(item.error_type or "Error" for item in self.of("failed"))
        return dict(found.most_common())

    @property
    def complete(self) -> bool:
        """Every input ran and finished ok."""
        return all(item.status == "ok" for item in self.items)

    def to_dict(self) -> dict[str, Any]:
        interval = self.confidence_interval
        return {
            "batch_id": self.batch_id,
            "flow": self.flow,
            "journal": self.journal,
            "duration_s": self.duration_s,
            "total": len(self.items),
            "counts": self.counts,
            "success_rate": self.success_rate,
            "confidence_interval": list(interval) if interval else None,
            "errors_by_type": self.errors_by_type,
            "usage": self.usage.model_dump(),
            "cost_usd": self.usage.cost_usd,
            "by_agent": {k: u.model_dump() for k, u in self.by_agent.items()},
            "by_model": {k: u.model_dump() for k, u in self.by_model.items()},
            "items": [item.to_dict() for item in self.items],
        }


# -- inputs ---------------------------------------------------------------------------


def read_inputs(path: str | Path, *, text: bool = False) -> list[BatchInput]:
    """The inputs of a JSONL file: one JSON object per line; blank lines are ignored.

    With ``text`` (a flow whose input is ``tm.Text``), a JSON string is an input
    too: the text itself. A line that is not UTF-8, not JSON or not an object
    (nor a string, with ``text``) becomes an input with a ``problem`` naming its
    line; it is reported and skipped, the rest run.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"no such inputs file: {path}") from None
    except IsADirectoryError:
        raise ConfigurationError(f"inputs {path} is a directory, not a JSONL file") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read inputs {path}: {exc.strerror or exc}") from None
    found: list[BatchInput] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a BOM some editors write
        if not raw.strip():
            continue
        item = BatchInput(index=len(found), line=number)
        found.append(item)
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            item.problem = f"line {number}: not UTF-8 text (byte offset {exc.start})"
            continue
        try:
            value = json.loads(decoded)
        except json.JSONDecodeError as exc:
            item.problem = f"line {number}: not valid JSON: {exc.msg} (column {exc.colno})"
            continue
        if not isinstance(value, dict) and not (text and isinstance(value, str)):
            wanted = "a JSON object or string" if text else "a JSON object"
            item.problem = f"line {number}: expected {wanted}, got {_json_type(value)}"
            continue
        item.value = value
    return found


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _problem_type(problem: str) -> str:
    if "not valid JSON" in problem or "not UTF-8" in problem:
        return "InvalidJSON"
    if "expected a JSON object" in problem:  # (or string)
        return "NotAnObject"
    return "InputValidationError"


def _entries(inputs: Iterable[Any] | str | Path, *, text: bool = False) -> list[BatchInput]:
    if isinstance(inputs, str | Path):
        return read_inputs(inputs, text=text)
    entries: list[BatchInput] = []
    for value in inputs:
        if isinstance(value, BatchInput):
            entries.append(value)
        else:
            entries.append(BatchInput(index=len(entries), value=value))
    indexes = [e.index for e in entries]
    if len(set(indexes)) != len(indexes):
        raise ConfigurationError("batch inputs: two inputs have the same index")
    return entries


def run_id_for(batch_id: str, index: int) -> str:
    """The run id of item ``index`` of batch ``batch_id``."""
    return f"{batch_id}-{index:05d}"


# -- running ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Work:
    entry: BatchInput
    validated: BaseModel
    run_id: str
    exists: bool


class _Batch:
    """One invocation of a batch: its journal, its meter and its items."""

    def __init__(
        self,
        flow: Step[Any, Any],
        batch_id: str,
        store: Journal,
        options: dict[str, Any],
        progress: Callable[[BatchProgress], None] | None,
    ) -> None:
        self.flow = flow
        self.batch_id = batch_id
        self.store = store
        self.options = options
        self.progress = progress
        self.items: dict[int, BatchItem] = {}
        self.total = 0
        self.running = 0
        self.meter = BatchMeter(options["budget"], on_spend=self._spent)

    # -- progress --------------------------------------------------------------------

    def _spent(self, usage: Usage) -> None:
        self.report_progress(None)

    def report_progress(self, item: BatchItem | None) -> None:
        if self.progress is None:
            return
        counts = _counts(self.items.values())
        self.progress(
            BatchProgress(
                batch_id=self.batch_id,
                total=self.total,
                done=len(self.items),
                ok=counts.get("ok", 0),
                failed=counts.get("failed", 0),
                waiting=counts.get("waiting", 0),
                skipped=counts.get("malformed", 0) + counts.get("skipped", 0),
                running=self.running,
                usage=self.meter.usage.model_copy(),
                item=item,
            )
        )

    def finish(self, item: BatchItem) -> None:
        self.items[item.index] = item
        self.report_progress(item)

    # -- what the journal holds ------------------------------------------------------

    def summarize(self, item: BatchItem, events: list[Event] | None = None) -> BatchItem:
        """Fill ``item`` from its run's journal: status, output or error, usage."""
        assert item.run_id is not None
        store = self.store
        if events is None:
            try:
                events = store.read(item.run_id)
            except RunNotFound:
                return item
        if not events:
            return item
        reducer = reduce_events(events, store)
        root = reducer.finish(events[-1])
        item.usage = reducer.usage
        item.by_model = dict(reducer.by_model)
        from .render import usage_by_agent

        item.by_agent = usage_by_agent(root)
        last = events[-1]
        if last.type == "run.finished":
            item.status, item.output = "ok", load_payload(last, store, "output")
            item.error_type = item.error = None
        elif last.type == "run.failed":
            item.status = "failed"
            item.error_type = str(last.payload.get("type") or "RunError")
            item.error = str(last.payload.get("message") or "")
        elif last.type == "run.suspended":
            item.status = "waiting"
            item.waiting = [str(k) for k in last.payload.get("waiting") or []]
        elif item.status not in ("failed", "waiting"):  # cut off: a crash, or still running
            item.status, item.error_type = "failed", "Incomplete"
            item.error = f"run {item.run_id} ended without a recorded end (killed?)"
        return item

    def check_recorded(self, work: _Work, events: list[Event]) -> str | None:
        """Why a journaled run cannot be item ``work`` any more, or None."""
        started = events[0]
        if started.payload.get("flow") != self.flow.name:
            return (
                f"run {work.run_id} was made by flow {started.payload.get('flow')!r}, "
                f"not {self.flow.name!r}"
            )
        recorded = load_payload(started, self.store, "input")
        if canonical_json(recorded) != canonical_json(work.validated.model_dump(mode="json")):
            where = f"line {work.entry.line}" if work.entry.line else f"input {work.entry.index}"
            return (
                f"{where} differs from the input batch {self.batch_id!r} journaled for run "
                f"{work.run_id}: run a changed input file under a new batch id"
            )
        return None

    # -- one item --------------------------------------------------------------------

    async def run_item(self, work: _Work) -> BatchItem:
        entry = work.entry
        item = BatchItem(entry.index, "failed", line=entry.line, run_id=work.run_id)
        options = self.options
        common = {
            "journal": self.store,
            "deadline": options["deadline"],
            "durability": options["durability"],
            "lease_ttl": options["lease_ttl"],
            "state": options["state"],
        }
        try:
            if not work.exists:
                item.action = "started"
                await arun(
                    self.flow,
                    work.validated,
                    run_id=work.run_id,
                    intent=options["intent"],
                    budget=options["item_budget"],
                    grant=options["grant"],
                    target=options["target"],
                    **common,
                )
            else:
                item.action = "resumed"
                if await self.still_pending(work.run_id):
                    item.action = "checked"
                    return self.summarize(item)
                await aresume(work.run_id, self.flow, in_doubt=options["in_doubt"], **common)
        except RunWaiting as exc:
            item.status, item.waiting = "waiting", list(exc.waiting)
        except (RunExists, LeaseHeld):  # another process of this batch has the item
            return await self.await_elsewhere(work, item)
        except Exception as exc:  # the run's end is journaled; errors before it are not
            item.status, item.error_type, item.error = "failed", type(exc).__name__, str(exc)
            try:
                events = self.store.read(work.run_id)
            except Exception:
                return item
            return self.summarize(item, events)
        return self.summarize(item)

    async def await_elsewhere(self, work: _Work, item: BatchItem) -> BatchItem:
        """The item's run belongs to another live process (the same batch run twice,
        to go faster): wait for its end and report that. A worker that dies with it
        leaves its lease to expire; the item is then resumed here, once."""
        item.action = "elsewhere"
        store, delay = self.store, 0.02
        while True:
            head = store.head(work.run_id)
            if not lease_live(head.owner, head.expires_at, now()):
                try:
                    events = store.read(work.run_id)
                except RunNotFound:  # registered, no event yet: its worker died at once
                    events = []
                if events and events[-1].type in _RUN_ENDS:
                    return self.summarize(item, events)
                work = _Work(work.entry, work.validated, work.run_id, exists=True)
                return await self.run_item(work)  # its worker is gone: finish it here
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def still_pending(self, run_id: str) -> bool:
        """Whether a waiting run waits only for provider batches that are still running.

        Then resuming it would only journal that it still waits: it is left as it is.
        """
        events = self.store.read(run_id)
        if events[-1].type != "run.suspended":
            return False
        waiting = [str(k) for k in events[-1].payload.get("waiting") or []]
        if not waiting:
            return False
        recorded = index_events(events, self.store).effects
        for key in waiting:
            rec = recorded.get(key)
            submitted = recorded.get(key.replace("/batch_result#", "/batch_submit#"))
            if rec is None or rec.kind is not RESULT or rec.status not in ("waiting", "started"):
                return False
            if submitted is None or submitted.kind is not SUBMIT or submitted.status != "ok":
                return False
            handle = submitted.value
            model = self.model_for(handle)
            if model is None:
                return False
            try:
                if await pb.collect(model, handle) is not None:
                    return False
            except Exception:
                return False  # an answer (a failure): the resume journals it
        return True

    def model_for(self, handle: Any) -> Any:
        if not isinstance(handle, dict):
            return None
        for step in self.flow.walk():
            if isinstance(step, Agent):
                model = step.model
                candidates = getattr(model, "models", None) or [model]
                for candidate in candidates:
                    if (
                        pb.supports(candidate)
                        and candidate.provider == handle.get("provider")
                        and candidate.name == handle.get("model")
                    ):
                        return candidate
        return None


async def abatch(
    flow: Step[Any, Any],
    inputs: Iterable[Any] | str | Path,
    *,
    batch_id: str | None = None,
    journal: str | Path | Journal = DEFAULT_JOURNAL,
    concurrency: int = 4,
    budget: Budget | None = None,
    item_budget: Budget | None = None,
    provider_batch: bool = False,
    poll_every: float | None = None,
    intent: Intent | None = None,
    grant: Iterable[str] | None = None,
    deadline: float | None = None,
    durability: Durability = "normal",
    retry_failed: bool = True,
    in_doubt: InDoubtPolicy = "fail",
    progress: Callable[[BatchProgress], None] | None = None,
    target: str | None = None,
    state: StateStore | str | Path | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> BatchReport:
    """Run ``flow`` on every input, each as a journaled run; see the module docstring.

    ``inputs``: a JSONL file (path), or an iterable of inputs (models, dicts,
    JSON text, or ``BatchInput``). ``batch_id`` (default: a new random one)
    names the batch: the same id resumes it. ``concurrency`` bounds the items
    running at once. ``budget`` is shared by all items (tokens, cost, model
    calls); ``item_budget`` limits each run. ``provider_batch`` sends model
    calls through the provider's batch API; ``poll_every`` (seconds) keeps
    collecting until no item waits (default: return with items waiting).
    ``deadline`` applies to each item. ``retry_failed=False`` reports failed
    items from the journal instead of resuming them. ``in_doubt`` is
    ``aresume``'s policy for a tool call in doubt. ``target`` (``MODULE:ATTR``)
    is recorded in every run so ``typedmesh resume RUN`` finds the flow.
    """
    if not isinstance(flow, Step):
        raise ConfigurationError(f"batch() needs a Step, got {type(flow).__name__}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
    if poll_every is not None and not (math.isfinite(poll_every) and poll_every > 0):
        raise ConfigurationError(
            f"poll_every must be a positive number of seconds, got {poll_every}"
        )
    if batch_id is None:
        import os

        batch_id = os.urandom(6).hex()
    if not _BATCH_ID.match(batch_id):
        raise ConfigurationError(
            f"batch id {batch_id!r}: use letters, digits and _ . : - (at most 100, "
            "starting with a letter or digit)"
        )
    started = time.monotonic()
    entries = _entries(inputs, text=is_text(flow.input_type))
    store = open_journal(journal, durability=durability)
    opened = None
    if isinstance(state, str | Path):  # one store for every item, closed at the end
        from .state import open_store

        try:
            state = opened = open_store(state)
        except BaseException:
            if store is not journal:
                store.close()
            raise
    options = {
        "intent": intent,
        "item_budget": item_budget,
        "budget": budget,
        "grant": None if grant is None else list(grant),
        "deadline": deadline,
        "durability": durability,
        "in_doubt": in_doubt,
        "lease_ttl": lease_ttl,
        "target": target,
        "state": state,
    }
    run = _Batch(flow, batch_id, store, options, progress)
    try:
        todo = _prepare(run, entries, retry_failed)
        run.report_progress(None)
        with ExitStack() as stack:
            stack.enter_context(using_meter(run.meter))
            if provider_batch:
                stack.enter_context(batched_model_calls())
            while True:
                await _run_all(run, todo, concurrency)
                waiting = [w for w in todo if run.items[w.entry.index].status == "waiting"]
                if not waiting or poll_every is None:
                    break
                await asyncio.sleep(poll_every)
                for work in waiting:
                    work.exists = True
                    del run.items[work.entry.index]
                todo = waiting
    finally:
        if opened is not None:
            opened.close()
        if store is not journal:
            store.close()
    items = [run.items[e.index] for e in entries]
    total = Usage()
    by_agent: dict[str, Usage] = {}
    by_model: dict[str, Usage] = {}
    for item in items:
        add_usage(total, item.usage)
        _merge(by_agent, item.by_agent)
        _merge(by_model, item.by_model)
    return BatchReport(
        batch_id=batch_id,
        flow=flow.name,
        items=items,
        duration_s=time.monotonic() - started,
        journal=describe_journal(journal),
        usage=total,
        by_agent=by_agent,
        by_model=by_model,
    )


def _merge(into: dict[str, Usage], more: dict[str, Usage]) -> None:
    for key, usage in more.items():
        into[key] = into.get(key, Usage()) + usage


def _prepare(run: _Batch, entries: list[BatchInput], retry_failed: bool) -> list[_Work]:
    """Sort the inputs: malformed, already done (from the journal), and work to do.

    What the journal shows the batch's runs spent is the shared budget's start.
    """
    flow, store = run.flow, run.store
    run.total = len(entries)
    todo: list[_Work] = []
    spent = run.meter.usage
    for entry in entries:
        if entry.problem is not None:
            run.items[entry.index] = _malformed(entry, entry.problem)
            continue
        try:
            validated = coerce_input(flow, entry.value)
        except InputValidationError as exc:
            where = f"line {entry.line}: " if entry.line else f"input {entry.index}: "
            run.items[entry.index] = _malformed(entry, where + str(exc))
            continue
        run_id = run_id_for(run.batch_id, entry.index)
        try:
            events = store.read(run_id)
        except RunNotFound:
            events = []
        work = _Work(entry, validated, run_id, exists=bool(events))
        if not events:
            todo.append(work)
            continue
        item = BatchItem(entry.index, "failed", line=entry.line, run_id=run_id, action="journaled")
        problem = run.check_recorded(work, events)
        if problem is not None:
            item.error_type, item.error = "ConfigurationError", problem
            run.items[entry.index] = item
            continue
        run.summarize(item, events)
        add_usage(spent, item.usage)
        if item.status == "ok" or (item.status == "failed" and not retry_failed):
            run.items[entry.index] = item
        else:
            todo.append(work)
    return todo


def _malformed(entry: BatchInput, problem: str) -> BatchItem:
    return BatchItem(
        entry.index,
        "malformed",
        line=entry.line,
        error_type=_problem_type(problem),
        error=problem,
    )


async def _run_all(run: _Batch, todo: list[_Work], concurrency: int) -> None:
    pending: Iterator[_Work] = iter(todo)

    async def worker() -> None:
        for work in pending:  # one shared iterator: each item is taken once
            limit = None if work.exists else run.meter.used_up()
            if limit is not None:
                run.finish(
                    BatchItem(
                        work.entry.index,
                        "skipped",
                        line=work.entry.line,
                        run_id=work.run_id,
                        error_type="BudgetExceeded",
                        error=f"not started: the batch budget ({limit}) is used up",
                    )
                )
                continue
            run.running += 1
            try:
                item = await run.run_item(work)
            finally:
                run.running -= 1
            run.finish(item)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(todo)) or 1)))


def batch(
    flow: Step[Any, Any],
    inputs: Iterable[Any] | str | Path,
    *,
    batch_id: str | None = None,
    journal: str | Path | Journal = DEFAULT_JOURNAL,
    concurrency: int = 4,
    budget: Budget | None = None,
    item_budget: Budget | None = None,
    provider_batch: bool = False,
    poll_every: float | None = None,
    intent: Intent | None = None,
    grant: Iterable[str] | None = None,
    deadline: float | None = None,
    durability: Durability = "normal",
    retry_failed: bool = True,
    in_doubt: InDoubtPolicy = "fail",
    progress: Callable[[BatchProgress], None] | None = None,
    target: str | None = None,
    state: StateStore | str | Path | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> BatchReport:
    """Synchronous twin of ``abatch``; inside an event loop use ``abatch``."""
    return run_sync(
        abatch(
            flow,
            inputs,
            batch_id=batch_id,
            journal=journal,
            concurrency=concurrency,
            budget=budget,
            item_budget=item_budget,
            provider_batch=provider_batch,
            poll_every=poll_every,
            intent=intent,
            grant=grant,
            deadline=deadline,
            durability=durability,
            retry_failed=retry_failed,
            in_doubt=in_doubt,
            progress=progress,
            target=target,
            state=state,
            lease_ttl=lease_ttl,
        )
    )
