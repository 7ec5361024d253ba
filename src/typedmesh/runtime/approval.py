"""Durable human approval: a tool call that waits for a person's recorded decision.

A tool declared ``@tm.tool(requires_approval=True)`` (or with a predicate on
its arguments) does not run when the model asks for it. The call first
performs an *approval* effect, keyed by the call (``<call id>:approval``):
its live execution has no result, so the run suspends (``RunWaiting``, status
``waiting``) and no process needs to stay alive. ``approve`` (``typedmesh
approve RUN CALL_ID``) appends the decision to the run's hash-chained journal
with who decided, when, why, and the digest of the call it decides (the run,
the call id, the tool and its arguments), so a decision cannot be moved onto
another call. ``resume`` serves the decision like any journaled result: an
approved call then makes its own durable start and runs exactly once; a
denied one never runs and the model is told (``ApprovalDenied``, a
``ToolError``).

The call id is the tool call's effect key (``flow/agent/tool#0``), as
``pending_approvals`` and ``typedmesh approvals`` list it with the tool's name
and arguments, so an approver sees what they approve.
"""

from __future__ import annotations

import getpass
import random
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigurationError, LeaseHeld, RunError, ToolError
from ..journal import open_journal
from ..journal.base import Journal, status_of
from ..journal.events import Event, canonical_json, digest
from .effects import index_events
from .kinds import PENDING, EffectKind, Recorded, register_kind

if TYPE_CHECKING:
    from ..tools import Tool
    from .context import RunContext, RunState

__all__ = [
    "APPROVAL",
    "ApprovalDecision",
    "ApprovalDenied",
    "ApprovalError",
    "ApprovalKind",
    "ApprovalMismatch",
    "PendingApproval",
    "approve",
    "call_digest",
    "pending_approvals",
    "request_approval",
]

SUFFIX = ":approval"
"""An approval's effect key is its tool call's key with this suffix. Not ``/approval``:
an effect under a call's key counts as made inside it, so a replay whose flow no
longer asks for the approval would not be told."""

_DECISION_FIELDS = ("approved", "by", "decided_at", "reason", "call_digest")


class ApprovalKind(EffectKind):
    """A person's decision on one tool call: it waits until one is recorded."""

    name = "approval"
    started_type = "approval.requested"
    completed_type = "approval.decided"
    failed_type = "approval.error"
    waiting_type = "approval.waiting"
    may_wait: ClassVar[bool] = True
    commit_result: ClassVar[bool] = True

    def record_result(self, result: Any) -> tuple[dict[str, Any], dict[str, str] | None]:
        decision = result if isinstance(result, dict) else {}
        return {name: decision.get(name) for name in _DECISION_FIELDS}, None

    def recorded_value(self, payload: dict[str, Any], load: Any) -> Any:
        return {name: load(name) for name in _DECISION_FIELDS if name in payload}


APPROVAL = register_kind(ApprovalKind())


class ApprovalError(ConfigurationError):
    """``approve`` refused: the run waits for no approval, the call id is unknown, or
    the call was decided already. Nothing was recorded."""


class ApprovalDenied(ToolError):
    """The approver denied the call: the tool did not run. An agent tells its model."""

    def __init__(self, message: str, *, tool: str, decision: ApprovalDecision) -> None:
        self.decision = decision
        super().__init__(message, tool=tool)


class ApprovalMismatch(RunError):
    """A recorded decision names another call than the one asking (its digest differs)."""


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    """A recorded approval decision, as the journal holds it."""

    call_id: str
    approved: bool
    by: str
    decided_at: str
    reason: str | None
    call_digest: str

    @classmethod
    def from_recorded(cls, call_id: str, value: Any) -> ApprovalDecision:
        fields = value if isinstance(value, dict) else {}
        reason = fields.get("reason")
        return cls(
            call_id=call_id,
            approved=fields.get("approved") is True,
            by=str(fields.get("by") or ""),
            decided_at=str(fields.get("decided_at") or ""),
            reason=None if reason is None else str(reason),
            call_digest=str(fields.get("call_digest") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PendingApproval:
    """A tool call that waits for a decision: what an approver needs to see."""

    run_id: str
    call_id: str
    tool: str
    arguments: dict[str, Any]
    step: str
    """The path of the step that made the call."""
    agent: str | None
    """``name@version`` of the agent that made the call, when one did."""
    requested_at: str
    call_digest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def call_digest(run_id: str, call_id: str, tool: str, arguments: Any) -> str:
    """The identity of one tool call, which a decision carries: run, call id, tool, arguments."""
    return digest(
        canonical_json({"run_id": run_id, "call": call_id, "tool": tool, "arguments": arguments})
    )


def call_id_of(key: str) -> str:
    """A call id as given: a tool call's key, or its approval's key."""
    return key[: -len(SUFFIX)] if key.endswith(SUFFIX) else key


# -- inside a run --------------------------------------------------------------------


async def request_approval(
    ctx: RunContext, run: RunState, tool: Tool, call_id: str, arguments: dict[str, Any]
) -> ApprovalDecision:
    """Wait for the decision on the call ``call_id`` (suspending the run until one is
    recorded); return it when approved, raise ``ApprovalDenied`` when denied."""
    if run.journal is None and run.effects.mode == "live":
        raise ConfigurationError(
            f"tool {tool.name!r} requires approval, which waits in a journal: run the flow "
            "with journal=... (a file, or tm.MemoryJournal())"
        )
    ref = call_digest(ctx.run_id, call_id, tool.name, arguments)
    request = {"tool": tool.name, "arguments": arguments, "call": call_id, "call_digest": ref}

    async def ask() -> Any:
        return PENDING  # nobody has decided yet: the run suspends here

    value = await run.effects.perform(ctx, APPROVAL, call_id + SUFFIX, request, ask)
    decision = ApprovalDecision.from_recorded(call_id, value)
    if decision.call_digest != ref:
        raise ApprovalMismatch(
            f"the decision recorded for {call_id} is for another call "
            f"({decision.call_digest or 'no digest'}, this call is {ref})"
        )
    if not decision.approved:
        why = f": {decision.reason}" if decision.reason else ""
        raise ApprovalDenied(
            f"the call to tool {tool.name!r} was denied by {decision.by}{why}. It did not run; "
            "do not call it again for this request.",
            tool=tool.name,
            decision=decision,
        )
    return decision


# -- outside a run: listing and deciding ------------------------------------------------


def _events(store: Journal, run_id: str) -> list[Event]:
    from .replay import verified_events

    return verified_events(store, run_id)


def _approvals(events: list[Event], store: Journal) -> dict[str, Recorded]:
    """Every approval effect of a run, by its key."""
    effects = index_events(events, store).effects
    return {key: rec for key, rec in effects.items() if rec.kind.name == APPROVAL.name}


def _pending(run_id: str, key: str, rec: Recorded) -> PendingApproval:
    started = rec.started_event
    assert started is not None
    payload = started.payload
    agent = started.agent
    arguments = payload.get("arguments")
    return PendingApproval(
        run_id=run_id,
        call_id=call_id_of(key),
        tool=str(payload.get("tool", "")),
        arguments=arguments if isinstance(arguments, dict) else {},
        step=started.path,
        agent=f"{agent.get('name')}@{agent.get('version')}" if agent else None,
        requested_at=started.ts,
        call_digest=str(payload.get("call_digest", "")),
    )


def pending_approvals(
    run_id: str | None = None, *, journal: str | Path | Journal
) -> list[PendingApproval]:
    """The tool calls that wait for a decision: of one run, or of every waiting run."""
    store = open_journal(journal, must_exist=True)  # a path: one cached connection
    if run_id is not None:
        run_ids = [run_id]
    else:
        run_ids = [info.run_id for info in store.runs() if info.status == "waiting"]
    found: list[PendingApproval] = []
    for rid in run_ids:
        events = _events(store, rid)
        for key, rec in _approvals(events, store).items():
            if rec.status == "waiting" and rec.started_event is not None:
                found.append(_pending(rid, key, rec))
    return found


def _default_by() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment or the password database
        return "unknown"


def _refusal(run_id: str, call_id: str, store: Journal) -> ApprovalError:
    """Why ``call_id`` of ``run_id`` cannot be decided now, in one line."""
    events = _events(store, run_id)
    approvals = _approvals(events, store)
    rec = approvals.get(call_id + SUFFIX)
    if rec is not None and rec.status == "ok":
        done = ApprovalDecision.from_recorded(call_id, rec.value)
        verb = "approved" if done.approved else "denied"
        return ApprovalError(
            f"run {run_id!r}: call {call_id} was already {verb} by {done.by} at "
            f"{done.decided_at}; a decision is final"
        )
    waiting = sorted(call_id_of(k) for k, r in approvals.items() if r.status == "waiting")
    if not waiting:
        status = store.head(run_id).status or status_of(events)
        return ApprovalError(
            f"run {run_id!r} is not waiting for an approval (it is {status})"
            + (
                ""
                if status != "waiting"
                else "; it waits for another result (see `typedmesh waiting`)"
            )
        )
    return ApprovalError(
        f"run {run_id!r} has no call {call_id} waiting for approval; waiting: {', '.join(waiting)}"
    )


def approve(
    run_id: str,
    call_id: str,
    *,
    approved: bool = True,
    by: str | None = None,
    reason: str | None = None,
    journal: str | Path | Journal,
) -> ApprovalDecision:
    """Record the decision on the tool call ``call_id`` of the waiting run ``run_id``.

    ``by`` (default: the OS user) is who decided; the decision also carries
    when, ``reason`` and the digest of the call it decides, and is appended to
    the run's journal (signed when ``TYPEDMESH_JOURNAL_KEY`` is set). Then
    ``resume`` continues the run. Raises ``ApprovalError`` (nothing recorded)
    when the run waits for no approval, the call id is unknown, or the call
    was decided already.
    """
    from .waits import record_result

    call_id = call_id_of(call_id.strip())
    who = by if by is not None and by.strip() else _default_by()
    store = open_journal(journal, must_exist=True)
    events = _events(store, run_id)
    rec = _approvals(events, store).get(call_id + SUFFIX)
    if rec is None or rec.status != "waiting" or rec.started_event is None:
        raise _refusal(run_id, call_id, store)
    pending = _pending(run_id, call_id + SUFFIX, rec)
    expected = call_digest(run_id, call_id, pending.tool, pending.arguments)
    if pending.call_digest != expected:
        raise ApprovalError(
            f"run {run_id!r}: the request for {call_id} does not match its call "
            f"(digest {pending.call_digest or 'missing'}, expected {expected}); not decided"
        )
    decision = ApprovalDecision(
        call_id=call_id,
        approved=approved,
        by=who,
        decided_at=datetime.now(UTC).isoformat(),
        reason=reason or None,
        call_digest=expected,
    )
    value = {name: getattr(decision, name) for name in _DECISION_FIELDS}
    give_up = time.monotonic() + LEASE_WAIT_S
    while True:
        try:
            record_result(run_id, call_id + SUFFIX, value, journal=store, recorded_by=who)
            return decision
        except ConfigurationError:  # decided by someone else in the meantime
            raise _refusal(run_id, call_id, store) from None
        except LeaseHeld:
            # Another approver is recording (it holds the run for milliseconds), or the
            # run is being resumed: wait a moment, then say who decided, or give up.
            if time.monotonic() >= give_up:
                raise
            time.sleep(random.uniform(0.01, 0.05))
            rec = _approvals(_events(store, run_id), store).get(call_id + SUFFIX)
            if rec is None or rec.status != "waiting":
                raise _refusal(run_id, call_id, store) from None


LEASE_WAIT_S = 2.0
"""How long ``approve`` waits for a run another writer holds before it gives up."""
