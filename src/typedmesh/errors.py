"""One error hierarchy for the whole framework.

Every error typedmesh raises for a domain condition is a ``TypedMeshError``;
catching that one class is enough to separate framework failures from bugs::

    TypedMeshError
    ├── UserError                 misuse found when a flow is built or configured
    │   ├── ContractError         a handoff whose types cannot meet
    │   ├── ConfigurationError    a bad argument (unknown model string, max_rounds < 1, ...)
    │   │   └── SessionBusy       a session's last turn has not ended: the next one waits
    │   └── MissingExtraError     an optional integration is not installed
    ├── RunError                  a run failed; carries ``run_id`` and ``partial``
    │   ├── InputValidationError  the run input does not fit the flow's input model
    │   ├── OutputValidationError a model kept returning output that fails its contract
    │   ├── HandoffError          a value failed the next step's contract at run time
    │   ├── StepFailed            a user step raised a non-typedmesh exception (the cause)
    │   ├── GateError             an output passed its model but failed a framework gate
    │   │   ├── ConflictsDropped  a merge dropped a detected conflict
    │   │   └── PlanRejected      a planner kept returning an invalid plan
    │   ├── ModelError            a model provider failed
    │   │   └── TransientModelError   worth retrying (rate limit, 5xx, timeout)
    │   │       └── CircuitOpen       the model's circuit breaker refused the call
    │   ├── ScriptExhausted       a ScriptedModel was called more often than scripted
    │   ├── ToolDenied            a tool call lacked a required scope
    │   ├── ToolError             a tool was unknown, got bad arguments, or raised
    │   ├── ToolLoopExceeded      an agent kept calling tools past its round cap
    │   ├── BudgetExceeded        a hard budget would be crossed
    │   │   └── UnpricedModel     a cost budget over a model with no known price
    │   ├── DeadlineExceeded      the run's deadline passed
    │   ├── RunWaiting            suspended on an effect with no result yet (not a failure)
    │   ├── NonDeterminismError   a replayed request differs from the journal
    │   ├── InDoubtError          a non-idempotent tool call may or may not have run
    │   ├── StaleVersion          an optimistic-lock race was lost
    │   └── AlreadyClaimed        a claim on a key is held by someone else
    ├── StateError                a shared-state store refused or failed an operation
    │   ├── StateUnavailable      the store is down or failed mid-operation
    │   ├── InvalidStateValue     bad key, value too large, or fails its model
    │   └── StateNotFound         update/delete of a key with no value
    └── JournalError              storage and integrity of journals
        ├── JournalCorrupt
        ├── VersionMismatch
        ├── RunNotFound
        ├── RunExists             a new run under a taken id (also a ConfigurationError)
        ├── JournalUnavailable    a journal server (PostgreSQL) cannot be reached
        ├── LeaseHeld             another live owner is writing the run
        └── LeaseLost             this writer was fenced out: stop

Errors carry fields, not only text, so callers can act on them.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyClaimed",
    "BudgetExceeded",
    "CircuitOpen",
    "ConfigurationError",
    "ConflictsDropped",
    "ContractError",
    "DeadlineExceeded",
    "GateError",
    "HandoffError",
    "InDoubtError",
    "InputValidationError",
    "InvalidStateValue",
    "JournalCorrupt",
    "JournalError",
    "JournalUnavailable",
    "LeaseHeld",
    "LeaseLost",
    "MissingExtraError",
    "ModelError",
    "NonDeterminismError",
    "OutputValidationError",
    "PlanRejected",
    "RunError",
    "RunExists",
    "RunNotFound",
    "RunWaiting",
    "ScriptExhausted",
    "SessionBusy",
    "StaleVersion",
    "StateError",
    "StateNotFound",
    "StateUnavailable",
    "StepFailed",
    "ToolDenied",
    "ToolError",
    "ToolLoopExceeded",
    "TransientModelError",
    "TypedMeshError",
    "UnpricedModel",
    "UserError",
    "VersionMismatch",
]


class TypedMeshError(Exception):
    """Root of every error typedmesh raises for a domain condition."""


class UserError(TypedMeshError):
    """Misuse that is found when a flow is built or configured, before any run."""


class ContractError(UserError):
    """Two steps whose contracts cannot meet.

    ``problems`` lists each missing or mismatched field in words.
    """

    def __init__(
        self, message: str, *, source: str = "", target: str = "", problems: list[str] | None = None
    ) -> None:
        self.source = source
        self.target = target
        self.problems = list(problems or [])
        detail = "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(message + detail)


class ConfigurationError(UserError):
    """A bad argument to a typedmesh API."""


class MissingExtraError(UserError, ImportError):
    """An optional integration was asked for but its extra is not installed."""

    def __init__(self, extra: str, module: str) -> None:
        self.extra = extra
        super().__init__(f"{module} needs the '{extra}' extra: pip install \"typedmesh[{extra}]\"")


class RunError(TypedMeshError):
    """A run failed.

    ``run_id`` names the run and ``partial`` holds what it finished before the
    failure (the trace, with each completed step's output), so nothing is lost;
    ``partial_calls`` are the model calls made so far (what its cost is made of).
    """

    run_id: str | None = None
    partial: Any = None
    partial_calls: tuple[Any, ...] = ()
    step_path: str | None = None


class InputValidationError(RunError):
    """The run input does not fit the flow's input model; no model was called."""

    def __init__(self, message: str, *, errors: list[Any]) -> None:
        self.errors = errors
        super().__init__(message)


class OutputValidationError(RunError):
    """A model's output kept failing its contract after every retry.

    ``raw_outputs`` holds each raw text the model returned and ``errors`` the
    validation errors of each attempt, in order.
    """

    def __init__(
        self, message: str, *, agent: str, raw_outputs: list[str], errors: list[list[str]]
    ) -> None:
        self.agent = agent
        self.raw_outputs = raw_outputs
        self.errors = errors
        super().__init__(message)


class HandoffError(RunError):
    """A step's output failed the next step's input contract when it was handed over.

    Contracts are checked when a flow is built; what no type can express (a
    validator on the target, a runtime-only constraint) is checked at the
    handoff. ``source`` and ``target`` name the two sides and ``problems``
    lists each failing field as ``path: message``.
    """

    def __init__(
        self, message: str, *, source: str = "", target: str = "", problems: list[str] | None = None
    ) -> None:
        self.source = source
        self.target = target
        self.problems = list(problems or [])
        super().__init__(message + "".join(f"\n  - {p}" for p in self.problems))


class StepFailed(RunError):
    """A user step raised an exception that is not a typedmesh error.

    ``error_type`` names the original exception's class (``ValueError``,
    ``mypkg.Oops``), ``step_path`` the step that raised it; the original is
    ``__cause__``. Like every ``RunError`` it carries ``run_id`` and ``partial``.
    """

    def __init__(self, message: str, *, step_path: str | None = None, error_type: str = "") -> None:
        self.step_path = step_path
        self.error_type = error_type
        super().__init__(message)

    @classmethod
    def wrap(cls, exc: BaseException, *, step_path: str | None = None) -> StepFailed:
        """A ``StepFailed`` for ``exc`` raised in ``step_path``, with ``exc`` as its cause."""
        kind = type(exc)
        error_type = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        where = f"step {step_path!r} raised " if step_path else ""
        failed = cls(f"{where}{error_type}: {exc}", step_path=step_path, error_type=error_type)
        failed.__cause__ = exc
        return failed


class GateError(RunError):
    """An output that fits its model but fails a framework gate, after every retry."""

    def __init__(self, message: str, *, step: str, problems: list[str], output: Any = None) -> None:
        self.step = step
        self.problems = problems
        self.output = output
        super().__init__(message + "".join(f"\n  - {p}" for p in problems))


class ConflictsDropped(GateError):
    """A merge step's output does not carry every conflict detected between branches."""


class PlanRejected(GateError):
    """A planner kept returning a plan that names unknown workers, bad inputs or cycles."""


class ModelError(RunError):
    """A model provider failed.

    Fields, when the provider said so: ``status`` (the HTTP status, None when no
    response arrived), ``error_type`` (the provider's error type, e.g.
    ``invalid_request_error``; ``timeout`` or ``connection_error`` when no
    response arrived) and ``provider`` (``openai``, ``anthropic``). ``usage``
    holds what a response that arrived but could not be used (a refusal, no
    choices) was billed, as a ``models.Usage``, so the run can still count it.
    """

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        error_type: str | None = None,
        provider: str | None = None,
        usage: Any = None,
    ) -> None:
        self.status = status
        self.error_type = error_type
        self.provider = provider
        self.usage = usage
        super().__init__(message)


class TransientModelError(ModelError):
    """A model failure that is worth retrying: rate limit, server error, timeout.

    ``retry_after`` is the wait in seconds the provider asked for (its
    ``Retry-After`` or ``retry-after-ms`` header), None when it did not ask;
    ``RetryPolicy.delay`` honours it up to ``max_retry_after``.
    """

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        error_type: str | None = None,
        provider: str | None = None,
        usage: Any = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(
            message, status=status, error_type=error_type, provider=provider, usage=usage
        )


class CircuitOpen(TransientModelError):
    """A model's circuit breaker is open: the call was not made (a fallback may take it)."""


class ScriptExhausted(RunError):
    """A ScriptedModel was called after every scripted response was used."""


class ToolDenied(RunError):
    """A tool call lacked a required scope; nothing ran."""

    def __init__(self, tool: str, *, missing: set[str], step: str = "") -> None:
        self.tool = tool
        self.missing = frozenset(missing)
        self.step = step
        super().__init__(f"tool {tool!r} denied for {step!r}: missing scope(s) {sorted(missing)}")


class ToolError(RunError):
    """A tool call that could not run (unknown tool, invalid arguments) or that raised."""

    def __init__(self, message: str, *, tool: str) -> None:
        self.tool = tool
        super().__init__(message)


class ToolLoopExceeded(RunError):
    """An agent kept asking for tools past its ``max_tool_rounds``."""


class BudgetExceeded(RunError):
    """A model call would cross a hard budget; it was not made."""

    def __init__(self, message: str, *, limit: str, value: float, spent: float) -> None:
        self.limit = limit
        self.value = value
        self.spent = spent
        super().__init__(message)


class NonDeterminismError(RunError):
    """A replayed request differs from the one recorded in the journal."""

    def __init__(self, effect_key: str, *, expected: Any, actual: Any) -> None:
        self.effect_key = effect_key
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"non-deterministic effect {effect_key}: recorded {expected!r}, new {actual!r}"
        )


class InDoubtError(RunError):
    """A non-idempotent tool call started but its result was never journaled."""

    def __init__(self, effect_key: str, *, tool: str) -> None:
        self.effect_key = effect_key
        self.tool = tool
        super().__init__(
            f"tool call {effect_key} ({tool}) is in doubt: it may have run; "
            "choose --retry-in-doubt or --skip-in-doubt"
        )


class StaleVersion(RunError):
    """An optimistic-lock write lost its race: the stored version moved on.

    ``expected`` is the version the writer read (None: it expected no value),
    ``actual`` the version found (0: there is no value); ``current`` is the
    value found (JSON), so the loser can decide without another read.
    """

    def __init__(self, key: str, *, expected: int | None, actual: int, current: Any = None) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        self.current = current
        want = "no value" if expected is None else f"version {expected}"
        found = "no value" if actual == 0 else f"version {actual}"
        super().__init__(f"stale version for {key!r}: expected {want}, found {found}")


class AlreadyClaimed(RunError):
    """A claim on a key is held by someone else: who, for what, until when.

    ``holder`` is the claimant's identity as stamped by the framework (run id,
    step path, agent name/version/deployment); ``owner`` is it in words.
    """

    def __init__(
        self,
        key: str,
        *,
        owner: str,
        action: str = "",
        holder: dict[str, Any] | None = None,
        expires_at: float | None = None,
    ) -> None:
        self.key = key
        self.owner = owner
        self.action = action
        self.holder = holder or {}
        self.expires_at = expires_at
        what = f" for {action!r}" if action else ""
        super().__init__(f"{key!r} is already claimed{what} by {owner}")


class StateError(TypedMeshError):
    """A shared-state store refused or failed an operation (not a lost race)."""

    def __init__(self, message: str, *, store: str = "", key: str | None = None) -> None:
        self.store = store
        self.key = key
        super().__init__(message)


class StateUnavailable(StateError):
    """The store cannot be reached or failed mid-operation; ``store`` names it."""


class InvalidStateValue(StateError):
    """A key or value the store will not hold: bad key, over the size limit, or a
    value that fails its namespace's model (on write or on read)."""

    def __init__(
        self,
        message: str,
        *,
        store: str = "",
        key: str | None = None,
        problems: list[str] | None = None,
    ) -> None:
        self.problems = problems or []
        super().__init__(message, store=store, key=key)


class StateNotFound(StateError):
    """``update`` or ``delete`` of a key that has no value (and no default was given)."""


class JournalError(TypedMeshError):
    """A journal could not be read or written."""


class JournalCorrupt(JournalError):
    """A journal's contents fail their integrity checks."""

    def __init__(self, message: str, *, run_id: str | None = None, seq: int | None = None) -> None:
        self.run_id = run_id
        self.seq = seq
        super().__init__(message)


class VersionMismatch(JournalError):
    """A journal was written by a schema this version cannot read."""


class RunNotFound(JournalError):
    """No run with that id is in the journal."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(message)


class SessionBusy(ConfigurationError):
    """A session's next turn was asked for while its last turn has not ended.

    Turns run one after another: a turn started while the previous one is still
    running, waits for an approval, or was cut off by a crash would answer
    without it. ``status`` says which (``running``, ``waiting``, ``incomplete``)
    and ``run_id`` names the turn to finish (wait, decide and resume, or resume).
    """

    def __init__(self, message: str, *, session_id: str, run_id: str, status: str) -> None:
        self.session_id = session_id
        self.run_id = run_id
        self.status = status
        super().__init__(message)


class RunExists(JournalError, ConfigurationError):
    """A new run was started under an id the journal already holds."""

    def __init__(self, message: str, *, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(message)


class JournalUnavailable(JournalError):
    """The journal's server cannot be reached: refused, down, or lost mid-run.

    ``server`` is ``host:port`` (never a password); ``reason`` is the driver's
    explanation in one line.
    """

    def __init__(self, message: str, *, server: str, reason: str) -> None:
        self.server = server
        self.reason = reason
        super().__init__(message)


class LeaseHeld(JournalError):
    """Another live owner is writing this run: a second writer is refused before it acts."""

    def __init__(self, message: str, *, run_id: str, owner: str, expires_at: float) -> None:
        self.run_id = run_id
        self.owner = owner
        self.expires_at = expires_at
        super().__init__(message)


class LeaseLost(JournalError):
    """This writer's lease on a run was taken over (or its head moved): it must stop."""

    def __init__(self, message: str, *, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(message)


class RunWaiting(RunError):
    """The run suspended on an effect that has no result yet (an approval, a signal).

    Nothing failed: the journal holds the run with status ``waiting``; once a result
    is recorded for each key in ``waiting``, ``resume`` continues it.
    """

    def __init__(self, message: str, *, waiting: list[str]) -> None:
        self.waiting = waiting
        super().__init__(message)


class UnpricedModel(BudgetExceeded):
    """A cost budget was set but the model has no known price: refused before any request."""


class DeadlineExceeded(RunError):
    """The run's ``deadline`` passed: no new call starts and the run stops."""
