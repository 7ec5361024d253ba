"""Reliability you can compute and measure: the chain math, and the same figures from journals.

Ten agents that are each right 95% of the time make a system that is right
``0.95 ** 10 ≈ 60%`` of the time. The functions here put numbers on that and
on what helps:

* ``chain(p, n)``: n independent steps that must all succeed;
* ``required_per_step(target, n)``: what each step needs for ``target`` end to end;
* ``with_retries(p, k)``: a step given ``k`` more independent tries;
* ``with_gate(p, catch_rate, retries)``: an evaluator that catches a bad output
  with probability ``catch_rate`` and has it redone; what slips past it silently;
* ``with_checkpoints(p, n, resumes=r)``: a failed run resumed from its last
  finished step versus restarted from scratch (success and work done).

``measure(journal)`` reads journaled runs and gives the same figures as they
happened: per agent (``name@version``) attempts, first-try success, success
after retries, failures by boundary and by error type, each rate with a
Wilson 95% interval; per run its end; per flow the measured end-to-end rate
beside the chain of its measured per-step rates (the prediction).

Every argument is checked: a rate outside [0, 1], ``n < 1`` or ``k < 0`` is a
``ConfigurationError`` that says which argument and why.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from . import errors as _errors
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .journal.base import Journal
    from .journal.events import Event

__all__ = [
    "BOUNDARIES",
    "AgentReliability",
    "ChainOutcome",
    "CheckpointFigures",
    "FlowReliability",
    "GateFigures",
    "Rate",
    "ReliabilityReport",
    "RunOutcome",
    "StepReliability",
    "boundary_of",
    "chain",
    "measure",
    "measure_runs",
    "parse_since",
    "required_per_step",
    "wilson",
    "with_checkpoints",
    "with_gate",
    "with_retries",
]

Z95 = 1.959963984540054
"""The normal quantile of a two-sided 95% interval."""

# -- arguments ------------------------------------------------------------------------


def _probability(name: str, value: object) -> float:
    """``value`` as a probability in [0, 1], else a ``ConfigurationError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigurationError(
            f"{name} must be a probability between 0 and 1, got {value!r} ({type(value).__name__})"
        )
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        hint = " (a percentage? give 0.95, not 95)" if 1.0 < number <= 100.0 else ""
        raise ConfigurationError(
            f"{name} must be a probability between 0 and 1, got {value!r}{hint}"
        )
    return number


def _count(name: str, value: object, minimum: int) -> int:
    """``value`` as a whole number >= ``minimum``, else a ``ConfigurationError``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigurationError(
            f"{name} must be a whole number >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    number = int(value)
    if number < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {number}")
    return number


def _geometric(x: float, terms: int) -> float:
    """``1 + x + ... + x ** (terms - 1)``."""
    if x == 1.0:
        return float(terms)
    return (1.0 - x**terms) / (1.0 - x)


# -- the math -------------------------------------------------------------------------


def chain(p: float | Sequence[float], n: int | None = None) -> float:
    """The probability that ``n`` independent steps, each succeeding with ``p``, all succeed.

    ``chain(0.95, 10) ≈ 0.599``. ``p`` may instead be one rate per step
    (``chain([0.99, 0.95, 0.9])``); then ``n`` is their number and may be left out.
    """
    if isinstance(p, Sequence) and not isinstance(p, str):
        rates = [_probability(f"p[{i}]", value) for i, value in enumerate(p)]
        if not rates:
            raise ConfigurationError("chain() needs at least one step rate, got an empty list")
        if n is not None and _count("n", n, 1) != len(rates):
            raise ConfigurationError(f"chain() got {len(rates)} step rates but n={n}")
        return math.prod(rates)
    rate = _probability("p", p)
    if n is None:
        raise ConfigurationError("chain(p, n) needs n, the number of steps")
    return rate ** _count("n", n, 1)


def required_per_step(target: float, n: int) -> float:
    """The success rate each of ``n`` chained steps needs for ``target`` end to end.

    ``required_per_step(0.95, 10) ≈ 0.99488``: the ``n``-th root of ``target``.
    """
    wanted = _probability("target", target)
    return math.pow(wanted, 1.0 / _count("n", n, 1))


def with_retries(p: float, k: int) -> float:
    """A step that succeeds with ``p`` per try, given ``k`` more independent tries.

    ``1 - (1 - p) ** (k + 1)``: it fails only when every one of the ``k + 1`` tries fails.
    Real retries are rarely independent (the same prompt, the same blind spot);
    measure them (``measure``) before trusting this.
    """
    rate = _probability("p", p)
    return 1.0 - (1.0 - rate) ** (_count("k", k, 0) + 1)


class _Figures(BaseModel):
    model_config = ConfigDict(frozen=True)


class GateFigures(_Figures):
    """What a step behind an evaluator gate delivers (the three outcomes sum to 1)."""

    success: float
    """A correct output passes the gate (on some try)."""
    silent_failure: float
    """A wrong output the gate did not catch: it flows on as if it were right."""
    caught_failure: float
    """The gate caught a wrong output on the last try allowed: the step fails loudly."""
    expected_attempts: float
    """Tries made on average (1 plus the redos)."""
    precision: float | None
    """Of the outputs that pass the gate, the share that is right (None if none pass)."""


def with_gate(p: float, catch_rate: float, retries: int = 1) -> GateFigures:
    """A step that is right with ``p`` per try, behind a gate that catches a wrong output
    with ``catch_rate`` and has it redone, at most ``retries`` times.

    Each try is right (``p``: it passes), wrong and caught (``(1 - p) * catch_rate``:
    redone while redos are left, else the step fails loudly), or wrong and missed
    (``(1 - p) * (1 - catch_rate)``: a silent failure). With ``q`` the caught share,
    ``success = p * (1 + q + ... + q ** retries)``. The gate is assumed never to
    reject a right output.
    """
    rate = _probability("p", p)
    catch = _probability("catch_rate", catch_rate)
    redos = _count("retries", retries, 0)
    caught = (1.0 - rate) * catch
    tries = _geometric(caught, redos + 1)
    success = rate * tries
    silent = (1.0 - rate) * (1.0 - catch) * tries
    passed = success + silent
    return GateFigures(
        success=success,
        silent_failure=silent,
        caught_failure=caught ** (redos + 1),
        expected_attempts=tries,
        precision=success / passed if passed > 0 else None,
    )


class ChainOutcome(_Figures):
    """One way of running a chain: how often it succeeds, and the work it takes."""

    success: float
    expected_step_runs: float
    """Step executions on average, the failed ones included."""


class CheckpointFigures(_Figures):
    """A chain with ``resumes`` second chances: resumed from a checkpoint, or restarted."""

    checkpointed: ChainOutcome
    """A failed step is run again; the finished steps before it are kept."""
    restarted: ChainOutcome
    """A failure starts the whole chain over."""


def _log_negbin_pmf(k: int, x: int, log_p: float, log_q: float) -> float:
    """log P(X = x), X the failures before the ``k``-th success (logs of the two rates)."""
    return math.lgamma(k + x) - math.lgamma(x + 1) - math.lgamma(k) + k * log_p + x * log_q


def _expected_min(k: int, log_p: float, log_q: float, cap: int) -> tuple[float, float]:
    """For X as above: (P(X <= cap - 1), E[min(X, cap)])."""
    cdf = 0.0
    expected = 0.0
    for x in range(cap):
        cdf += math.exp(_log_negbin_pmf(k, x, log_p, log_q))
        expected += max(0.0, 1.0 - cdf)  # sum of P(X > x)
    return min(cdf, 1.0), expected


def with_checkpoints(p: float, n: int, *, resumes: int = 1) -> CheckpointFigures:
    """``n`` chained steps (each succeeding with ``p``) given ``resumes`` second chances.

    Checkpointed (a journaled run resumed): each failure re-runs only the failed
    step, so the run succeeds when its ``n`` steps meet at most ``resumes``
    failures in all (a negative binomial). Restarted: each failure starts the
    chain over, so it succeeds with ``1 - (1 - p ** n) ** (resumes + 1)``, and
    each try runs steps up to the first failure.
    """
    rate = _probability("p", p)
    steps = _count("n", n, 1)
    chances = _count("resumes", resumes, 0)
    whole = rate**steps
    per_try = _geometric(rate, steps)  # steps run by one try: up to its first failure
    restarted = ChainOutcome(
        success=1.0 - (1.0 - whole) ** (chances + 1),
        expected_step_runs=per_try * _geometric(1.0 - whole, chances + 1),
    )
    if rate == 1.0:
        checkpointed = ChainOutcome(success=1.0, expected_step_runs=float(steps))
    elif rate == 0.0:
        checkpointed = ChainOutcome(success=0.0, expected_step_runs=float(chances + 1))
    else:
        log_p, log_q = math.log(rate), math.log1p(-rate)
        # F: failures before the n-th success; the run stops at n successes or
        # resumes + 1 failures. S: successes before the (resumes + 1)-th failure.
        success, failures = _expected_min(steps, log_p, log_q, chances + 1)
        _, successes = _expected_min(chances + 1, log_q, log_p, steps)
        checkpointed = ChainOutcome(success=success, expected_step_runs=failures + successes)
    return CheckpointFigures(checkpointed=checkpointed, restarted=restarted)


# -- rates ----------------------------------------------------------------------------


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes`` out of ``trials`` (95% by default).

    Unlike ``p ± z·sqrt(p(1-p)/n)`` it stays inside [0, 1] and is honest for
    small counts and for 0 or n successes. ``trials`` must be at least 1.
    """
    hits = _count("successes", successes, 0)
    total = _count("trials", trials, 1)
    if hits > total:
        raise ConfigurationError(f"successes ({hits}) cannot exceed trials ({total})")
    phat = hits / total
    z2 = z * z
    denominator = 1.0 + z2 / total
    centre = (phat + z2 / (2 * total)) / denominator
    half = z * math.sqrt(phat * (1 - phat) / total + z2 / (4 * total * total)) / denominator
    low = 0.0 if hits == 0 else max(0.0, centre - half)
    high = 1.0 if hits == total else min(1.0, centre + half)
    return low, high


class Rate(_Figures):
    """``successes`` out of ``trials``, with its Wilson 95% interval (None with no trials)."""

    successes: int
    trials: int
    value: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, successes: int, trials: int) -> Rate:
        if trials == 0:
            return cls(successes=0, trials=0, value=None, low=None, high=None)
        low, high = wilson(successes, trials)
        return cls(successes=successes, trials=trials, value=successes / trials, low=low, high=high)

    def __str__(self) -> str:
        if self.value is None or self.low is None or self.high is None:
            return "n/a (0 trials)"
        return (
            f"{self.value:.1%} [{self.low:.1%}, {self.high:.1%}] ({self.successes}/{self.trials})"
        )


# -- failures by boundary ---------------------------------------------------------------

BOUNDARIES = ("model", "validation", "gate", "tool", "budget", "other")
"""Where a failure crossed into the run, in the order reports list them."""

_BY_CLASS: tuple[tuple[str, tuple[type[BaseException], ...]], ...] = (
    ("budget", (_errors.BudgetExceeded, _errors.DeadlineExceeded)),
    ("model", (_errors.ModelError, _errors.ScriptExhausted)),
    (
        "validation",
        (_errors.OutputValidationError, _errors.HandoffError, _errors.InputValidationError),
    ),
    ("gate", (_errors.GateError,)),
    (
        "tool",
        (_errors.ToolDenied, _errors.ToolError, _errors.ToolLoopExceeded, _errors.InDoubtError),
    ),
)

_INCIDENTS = {
    "model.error": "model",
    "output.invalid": "validation",
    "output.gate_failed": "gate",
    "tool.error": "tool",
    "tool.denied": "tool",
    "tool.unknown": "tool",
    "tool.invalid_arguments": "tool",
    "budget.exceeded": "budget",
}
"""Events that say something went wrong at a boundary (whether or not it was recovered)."""

_REDOS = frozenset({"model.error", "output.invalid", "output.gate_failed"})
"""Incidents that mean the step's first try did not stand: a model call or output redone."""


def boundary_of(error_type: str) -> str:
    """The boundary a journaled error type (``"OutputValidationError"``) failed at."""
    found = getattr(_errors, error_type, None)
    if isinstance(found, type) and issubclass(found, BaseException):
        for boundary, classes in _BY_CLASS:
            if issubclass(found, classes):
                return boundary
    return "other"


# -- reading runs ---------------------------------------------------------------------


@dataclass(slots=True)
class _Attempt:
    """One start of one step in one run, and how it ended."""

    path: str
    agent: str
    seq: int
    outcome: str = "incomplete"
    """``completed``, ``failed``, ``cancelled`` or ``incomplete`` (cut off by a crash)."""
    error_type: str | None = None
    incidents: Counter[str] = field(default_factory=Counter)
    redone: bool = False


@dataclass(slots=True)
class _Run:
    run_id: str
    flow: str
    started_at: str
    status: str = "incomplete"
    error_type: str | None = None
    failed_step: str | None = None
    resumes: int = 0
    attempts: list[_Attempt] = field(default_factory=list)


def _agent_key(agent: dict[str, str] | None, path: str) -> str:
    if not agent:
        return path.rpartition("/")[2]
    return f"{agent.get('name', '?')}@{agent.get('version', '?')}"


def _read_run(events: Sequence[Event]) -> _Run:
    """Fold one run's events into its step attempts and its end."""
    first = events[0]
    run = _Run(run_id=first.run_id, flow=_read_flow(events), started_at=first.ts)
    open_steps: dict[str, _Attempt] = {}
    for event in events:
        kind = event.type
        if kind == "step.started":
            previous = open_steps.pop(event.path, None)
            if previous is not None:  # started again with no end between: cut off
                previous.outcome = "incomplete"
            attempt = _Attempt(event.path, _agent_key(event.agent, event.path), event.seq)
            open_steps[event.path] = attempt
            run.attempts.append(attempt)
        elif kind in ("step.completed", "step.failed", "step.cancelled"):
            ended = open_steps.pop(event.path, None)
            if ended is not None:
                ended.outcome = kind.partition(".")[2]
                if kind == "step.failed":
                    ended.error_type = str(event.payload.get("type") or "Error")
        elif kind == "run.resumed":
            run.resumes += 1
            open_steps.clear()  # what was open when the run stopped stays incomplete
            run.status, run.error_type, run.failed_step = "incomplete", None, None
        elif kind == "run.finished":
            run.status, run.error_type, run.failed_step = "finished", None, None
        elif kind == "run.failed":
            run.status = "failed"
            run.error_type = str(event.payload.get("type") or "Error")
            step_path = event.payload.get("step_path")
            run.failed_step = str(step_path) if step_path else None
        elif kind == "run.suspended":
            run.status = "waiting"
        elif kind in _INCIDENTS:
            owner = _owner(open_steps, event.path)
            if owner is not None:
                owner.incidents[_INCIDENTS[kind]] += 1
                owner.redone = owner.redone or kind in _REDOS
    return run


def _owner(open_steps: dict[str, _Attempt], path: str) -> _Attempt | None:
    """The innermost open step at ``path`` or above it (a tool's events are its step's)."""
    while path:
        found = open_steps.get(path)
        if found is not None:
            return found
        path = path.rpartition("/")[0]
    return None


def _leaves(attempts: Iterable[_Attempt]) -> list[_Attempt]:
    """The attempts of steps that started no step under them: agents and functions,
    not the patterns composing them."""
    attempts = list(attempts)
    parents: set[str] = set()
    for path in {a.path for a in attempts}:
        parts = path.split("/")
        parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return [a for a in attempts if a.path not in parents]


# -- the report -----------------------------------------------------------------------


class AgentReliability(_Figures):
    """One agent (``name@version``) over every run read, as measured."""

    agent: str
    attempts: int
    """Step executions that ended: completed or failed (not cancelled, not cut off)."""
    completed: int
    failed: int
    cancelled: int
    """Stopped because something else failed (a parallel branch): counted in no rate."""
    incomplete: int
    """Cut off by a crash (resumed or not): counted in no rate."""
    first_try: Rate
    """Completed with its first output: no model error, no invalid output, no gate redo."""
    success: Rate
    """Completed at all, after whatever retries and redos it took."""
    failures_by_boundary: dict[str, int]
    failures_by_error: dict[str, int]
    incidents_by_boundary: dict[str, int]
    """Everything that went wrong at a boundary, recovered or not (model errors, invalid
    outputs, gate rejections, tool errors, budget stops)."""


class StepReliability(_Figures):
    """One position of a flow (a step path) across the flow's runs."""

    path: str
    agent: str
    reach: float
    """Of the runs that had not failed before this step, the share that ran it."""
    first_try: Rate
    success: Rate


class FlowReliability(_Figures):
    """A flow's measured end-to-end rate beside the chain of its measured step rates."""

    flow: str
    runs: int
    finished: int
    failed: int
    unfinished: int
    """Running, waiting or cut off: in no rate."""
    resumed: int
    measured: Rate
    """Runs that finished, of those that finished or failed."""
    predicted: float | None
    """The chain of the measured per-step success rates: each step's factor is
    ``1 - reach * (1 - success)``, so a step run in only some runs (a loop's later
    rounds) weighs as often as it ran."""
    predicted_first_try: float | None
    """The same chain with first-try rates: the flow as it would be with no retries."""
    steps: list[StepReliability]
    failures_by_boundary: dict[str, int]
    failures_by_error: dict[str, int]


class RunOutcome(_Figures):
    """How one run ended."""

    run_id: str
    flow: str
    started_at: str
    status: str
    """``finished``, ``failed``, ``waiting`` or ``incomplete``."""
    error_type: str | None
    boundary: str | None
    failed_step: str | None
    resumes: int


class ReliabilityReport(_Figures):
    """Everything ``measure`` found in the runs it read."""

    runs: list[RunOutcome]
    agents: list[AgentReliability]
    flows: list[FlowReliability]
    end_to_end: Rate
    """Every run read that finished, of those that finished or failed."""


def _ordered(counter: Counter[str], order: Sequence[str] = ()) -> dict[str, int]:
    known = [(k, counter[k]) for k in order if counter[k]]
    rest = sorted((k, v) for k, v in counter.items() if k not in order and v)
    return dict(known + rest)


def _agent_figures(agent: str, attempts: Sequence[_Attempt]) -> AgentReliability:
    outcomes = Counter(a.outcome for a in attempts)
    ended = outcomes["completed"] + outcomes["failed"]
    first = sum(1 for a in attempts if a.outcome == "completed" and not a.redone)
    failed = [a for a in attempts if a.outcome == "failed"]
    incidents: Counter[str] = Counter()
    for a in attempts:
        incidents.update(a.incidents)
    return AgentReliability(
        agent=agent,
        attempts=ended,
        completed=outcomes["completed"],
        failed=outcomes["failed"],
        cancelled=outcomes["cancelled"],
        incomplete=outcomes["incomplete"],
        first_try=Rate.of(first, ended),
        success=Rate.of(outcomes["completed"], ended),
        failures_by_boundary=_ordered(
            Counter(boundary_of(a.error_type or "") for a in failed), BOUNDARIES
        ),
        failures_by_error=_ordered(Counter(a.error_type or "Error" for a in failed)),
        incidents_by_boundary=_ordered(incidents, BOUNDARIES),
    )


def _flow_figures(flow: str, runs: Sequence[_Run]) -> FlowReliability:
    statuses = Counter(r.status for r in runs)
    ended = [r for r in runs if r.status in ("finished", "failed")]
    leaves = {r.run_id: _leaves(r.attempts) for r in ended}
    first_seen: dict[str, tuple[int, int]] = {}
    agents: dict[str, Counter[str]] = {}
    for index, run in enumerate(sorted(ended, key=lambda r: r.started_at)):
        for a in leaves[run.run_id]:
            first_seen.setdefault(a.path, (index, a.seq))
            agents.setdefault(a.path, Counter())[a.agent] += 1
    order = sorted(first_seen, key=first_seen.__getitem__)
    steps: list[StepReliability] = []
    predicted: float | None = 1.0 if order else None
    predicted_first: float | None = predicted
    failed_before: dict[str, bool] = {r.run_id: False for r in ended}
    for path in order:
        eligible = reached = completed = first = tries = 0
        failed_here: set[str] = set()
        for run in ended:
            mine = [
                a
                for a in leaves[run.run_id]
                if a.path == path and a.outcome in ("completed", "failed")
            ]
            if not failed_before[run.run_id]:
                eligible += 1
                reached += bool(mine)
            tries += len(mine)
            completed += sum(a.outcome == "completed" for a in mine)
            first += sum(a.outcome == "completed" and not a.redone for a in mine)
            if any(a.outcome == "failed" for a in mine):
                failed_here.add(run.run_id)
        for run_id in failed_here:
            failed_before[run_id] = True
        reach = reached / eligible if eligible else 0.0
        success, first_try = Rate.of(completed, tries), Rate.of(first, tries)
        if predicted is not None and predicted_first is not None:
            predicted *= 1.0 - reach * (1.0 - (success.value or 0.0))
            predicted_first *= 1.0 - reach * (1.0 - (first_try.value or 0.0))
        steps.append(
            StepReliability(
                path=path,
                agent=agents[path].most_common(1)[0][0],
                reach=reach,
                first_try=first_try,
                success=success,
            )
        )
    failures = [r for r in ended if r.status == "failed"]
    return FlowReliability(
        flow=flow,
        runs=len(runs),
        finished=statuses["finished"],
        failed=statuses["failed"],
        unfinished=len(runs) - len(ended),
        resumed=sum(1 for r in runs if r.resumes),
        measured=Rate.of(statuses["finished"], len(ended)),
        predicted=predicted,
        predicted_first_try=predicted_first,
        steps=steps,
        failures_by_boundary=_ordered(
            Counter(boundary_of(r.error_type or "") for r in failures), BOUNDARIES
        ),
        failures_by_error=_ordered(Counter(r.error_type or "Error" for r in failures)),
    )


def measure_runs(runs: Iterable[Sequence[Event]]) -> ReliabilityReport:
    """The report of runs given as their events (each run's events in order)."""
    read = [_read_run(events) for events in runs if events]
    read.sort(key=lambda r: r.started_at)
    by_agent: dict[str, list[_Attempt]] = {}
    for run in read:
        for attempt in _leaves(run.attempts):
            by_agent.setdefault(attempt.agent, []).append(attempt)
    by_flow: dict[str, list[_Run]] = {}
    for run in read:
        by_flow.setdefault(run.flow, []).append(run)
    ended = [r for r in read if r.status in ("finished", "failed")]
    return ReliabilityReport(
        runs=[
            RunOutcome(
                run_id=r.run_id,
                flow=r.flow,
                started_at=r.started_at,
                status=r.status,
                error_type=r.error_type,
                boundary=boundary_of(r.error_type) if r.error_type else None,
                failed_step=r.failed_step,
                resumes=r.resumes,
            )
            for r in read
        ],
        agents=[_agent_figures(name, by_agent[name]) for name in sorted(by_agent)],
        flows=[_flow_figures(name, by_flow[name]) for name in sorted(by_flow)],
        end_to_end=Rate.of(sum(r.status == "finished" for r in ended), len(ended)),
    )


_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|m|min|mins|h|hr|hrs|d|day|days|w|wk|wks)\s*$", re.I
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str | datetime, *, now: datetime | None = None) -> datetime:
    """A point in time from an ISO time (``2026-01-31T12:00``, UTC unless it says)
    or a duration back from ``now`` (``90s``, ``30m``, ``2h``, ``7d``, ``1w``)."""
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    match = _DURATION.match(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)[0].lower()]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError(
            f"since: {text!r} is neither an ISO time (2026-01-31T12:00:00) nor a duration "
            "(30m, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _started(ts: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def measure(
    journal: Journal | str | Path,
    run_ids: Sequence[str] | None = None,
    *,
    flow: str | None = None,
    since: str | datetime | None = None,
    now: datetime | None = None,
) -> ReliabilityReport:
    """Measure the runs of ``journal`` (a ``Journal``, a path or URL).

    ``run_ids`` picks runs (``RunNotFound`` for one the journal does not hold);
    otherwise every run is read. ``flow`` keeps one flow's runs; ``since`` keeps
    runs started at or after a time (see ``parse_since``).
    """
    from .journal import open_journal

    after = parse_since(since, now=now) if since is not None else None
    store = open_journal(journal, must_exist=True, readonly=True)
    if run_ids:
        chosen = list(dict.fromkeys(run_ids))
    else:
        chosen = [info.run_id for info in store.runs() if flow is None or info.flow == flow]
    runs: list[list[Event]] = []
    for run_id in chosen:
        events = store.read(run_id)
        if not events:
            continue
        if after is not None:
            started = _started(events[0].ts)
            if started is None or started < after:
                continue
        if flow is not None and _read_flow(events) != flow:
            continue
        runs.append(events)
    return measure_runs(runs)


def _read_flow(events: Sequence[Event]) -> str:
    """The flow a run ran: its ``run.started`` names it (else its root path)."""
    first = events[0]
    named = first.payload.get("flow") if first.type == "run.started" else None
    return str(named or first.path.partition("/")[0])
