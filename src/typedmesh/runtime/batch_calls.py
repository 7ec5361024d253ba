"""Model calls through a provider's batch API, and what the items of one batch share.

**Provider batches.** Under ``provider_batch()`` (``tm.batch(...,
provider_batch=True)`` sets it for every item) a call to an OpenAI or
Anthropic model is not sent to the chat endpoint: its request joins a
provider batch (about half the price, answered within hours) and the run
suspends with status ``waiting``; no process needs to stay alive. The call
is still one ``model`` effect (``model.request`` ... ``model.response``, so
trace, usage and replay are the ordinary ones) with two effects inside it:

* ``batch_submit`` (``<model key>/batch_submit#0``): the submission, a side
  effect (it is billed), so its start is durable first and its result (the
  provider batch id and the request's ``custom_id``) is committed before
  anything waits on it. A resume serves it: a request is never submitted
  twice unless the process died during the submission call itself.
* ``batch_result`` (``<model key>/batch_result#0``): a waiting kind whose
  result is the model's response. A resume (``tm.resume``, ``typedmesh
  resume RUN``, or re-running the batch with the same batch id) asks the
  provider once: when the batch has ended, the response is journaled here
  and served; else the run stays waiting. ``typedmesh record`` can also give
  it a response by hand (a ``ModelResponse`` as JSON).

A run whose journal holds a submission stays batched on resume without the
switch; calls to other models (offline doubles) run as usual. Cost is the
list price times ``models.provider_batch.BATCH_DISCOUNT`` (one half).

**A batch's meter.** ``tm.batch`` runs each item as its own run; the items
share one ``BatchMeter``: what they spend, and the batch budget every model
call reserves against before it is sent (as a run's own budget does), so
concurrent items cannot together cross it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import BudgetExceeded, ModelError
from ..models import provider_batch as pb
from ..models.base import Model, ModelRequest, ModelResponse, Usage
from .budget import Budget, BudgetTracker, Reservation
from .kinds import MODEL, PENDING, EffectKind, InDoubtPolicy, Recorded, register_kind

if TYPE_CHECKING:
    from .context import RunContext, RunState

__all__ = [
    "RESULT",
    "SUBMIT",
    "BatchMeter",
    "batched",
    "call_batched",
    "current_meter",
    "metered",
    "provider_batch",
    "using_meter",
]


class BatchSubmitKind(EffectKind):
    """A request handed to a provider batch: billed, so durable before it is sent."""

    name: ClassVar[str] = "batch_submit"
    durable_start: ClassVar[bool] = True
    commit_result: ClassVar[bool] = True

    def error_payload(self, exc: BaseException) -> dict[str, Any]:
        return MODEL.error_payload(exc)

    def error_from(self, error: dict[str, Any]) -> Exception:
        return MODEL.error_from(error)

    def in_doubt(
        self, rec: Recorded, policy: InDoubtPolicy, ctx: RunContext, key: str
    ) -> Literal["retry"]:
        # the process died during the submission call: it may have reached the
        # provider (then that batch's answer is never read), so say so and send again
        ctx.record("batch_submit.in_doubt", key=key, resolution="submitted again")
        return "retry"


class BatchResultKind(EffectKind):
    """The answer to a batched request: waits until the provider batch has ended."""

    name: ClassVar[str] = "batch_result"
    may_wait: ClassVar[bool] = True
    commit_result: ClassVar[bool] = True

    def record_result(self, result: Any) -> tuple[dict[str, Any], dict[str, str] | None]:
        response = (
            result if isinstance(result, ModelResponse) else ModelResponse.model_validate(result)
        )
        return MODEL.record_result(response)

    def recorded_value(self, payload: dict[str, Any], load: Any) -> Any:
        return load("response")

    def serve(self, rec: Recorded) -> Any:
        if rec.status == "error":
            raise self.error_from(rec.error or {})
        return ModelResponse.model_validate(rec.value)

    def error_payload(self, exc: BaseException) -> dict[str, Any]:
        return MODEL.error_payload(exc)

    def error_from(self, error: dict[str, Any]) -> Exception:
        return MODEL.error_from(error)


SUBMIT = register_kind(BatchSubmitKind())
RESULT = register_kind(BatchResultKind())

_SWITCH: ContextVar[bool] = ContextVar("typedmesh_provider_batch", default=False)


@contextmanager
def provider_batch(on: bool = True) -> Iterator[None]:
    """Inside: model calls of runs started here go through provider batches (see above)."""
    token = _SWITCH.set(on)
    try:
        yield
    finally:
        _SWITCH.reset(token)


def batched(run: RunState, model: Model) -> bool:
    """Whether this call goes through a provider batch."""
    if not pb.supports(model):
        return False
    mode = run.effects.mode
    if mode == "live":
        return _SWITCH.get()
    if mode != "resume":
        return False  # a what-if replay's live calls are answered now
    return _SWITCH.get() or any(rec.kind is SUBMIT for rec in run.effects.recorded.values())


async def call_batched(
    ctx: RunContext, run: RunState, model: Model, request: ModelRequest, key: str
) -> ModelResponse:
    """The model call ``key`` through a provider batch: its response, or the run suspends."""
    effects = run.effects
    recorded = effects.recorded if effects.mode == "resume" else {}
    # a resume that runs a failed call again (the failure that stopped the run)
    # submits it again, under the next pair of keys
    n = 0
    while (rec := recorded.get(f"{key}/batch_result#{n}")) is not None and rec.status == "error":
        n += 1
    custom_id = pb.custom_id_for(run.run_id, f"{key}#{n}")

    async def submit() -> dict[str, str]:
        return await pb.submit(model, request, custom_id)

    ask = {"provider": model.provider, "model": model.name, "custom_id": custom_id}
    handle = await effects.perform(ctx, SUBMIT, f"{key}/batch_submit#{n}", ask, submit)

    async def poll() -> Any:
        try:
            response = await pb.collect(model, handle)
        except ModelError as exc:
            if isinstance(exc.usage, Usage):  # billed though unusable (a refusal)
                _price(model, exc.usage)
            raise
        if response is None:
            return PENDING
        from .model_calls import _check_usage, _storable

        _check_usage(model, response.usage)
        response = _storable(response)
        _price(model, response.usage)
        return response

    result_key = f"{key}/batch_result#{n}"
    rec = recorded.get(result_key)
    if rec is not None and rec.status in ("waiting", "started"):
        await _collect_recorded(ctx, rec, result_key, poll)
    response: ModelResponse = await effects.perform(ctx, RESULT, result_key, handle, poll)
    return response


async def _collect_recorded(
    ctx: RunContext, rec: Recorded, key: str, poll: Callable[[], Awaitable[Any]]
) -> None:
    """A waiting result on resume: ask the provider once; journal the answer if there is one."""
    try:
        result = await poll()
    except ModelError as exc:  # the request's own failure: journaled, then the call fails
        ctx.emit(RESULT.failed_type, RESULT.error_payload(exc), key=key)
        await ctx.commit()
        raise
    if result is PENDING:
        return  # still running: perform finds it waiting and the run suspends again
    fields, raw = RESULT.record_result(result)
    ctx.emit(RESULT.completed_type, fields, key=key, raw=raw)
    await ctx.commit()
    rec.status, rec.value = "ok", result.model_dump(mode="json")


def _price(model: Model, usage: Usage) -> None:
    fields = usage.__dict__  # plain counters, as model_calls sets them
    fields["cost_usd"] = pb.batch_cost(
        model.name, model.provider, usage.input_tokens, usage.output_tokens
    )
    fields["model_calls"] = 1


# -- a batch's meter ----------------------------------------------------------------


class BatchMeter:
    """What the items of one batch spend together, and the budget they share.

    ``usage`` starts at what the batch's runs spent before (a batch run again
    under the same id continues its budget) and grows with every model call
    an item makes. ``budget`` (tokens, cost, model calls) is reserved against
    before each call, like a run's own budget: a call that would cross it is
    not made and its run stops with ``BudgetExceeded``.
    """

    def __init__(
        self,
        budget: Budget | None = None,
        spent: Usage | None = None,
        on_spend: Callable[[Usage], None] | None = None,
    ) -> None:
        self.usage = spent.model_copy() if spent is not None else Usage()
        self.budget = budget
        self.tracker = None if budget is None else BudgetTracker(budget, self.usage)
        self.on_spend = on_spend
        self.refused: str | None = None
        """The limit a call was refused by: no new item starts after that."""

    def reserve(self, model: str, request_chars: int, max_tokens: int | None) -> Reservation | None:
        """Hold an estimate of one call, or raise ``BudgetExceeded``."""
        if self.tracker is None:
            return None
        try:
            return self.tracker.reserve(model, request_chars, max_tokens)
        except BudgetExceeded as exc:
            self.refused = exc.limit  # a call would cross it: so would a new item's
            raise

    def release(self, held: Reservation | None) -> None:
        if held is not None and self.tracker is not None:
            self.tracker.release(held)

    def spend(self, usage: Usage) -> None:
        """A call's usage (billed, answered or not)."""
        total = self.usage.__dict__
        for name in ("input_tokens", "output_tokens", "model_calls", "tool_calls", "cost_usd"):
            total[name] += getattr(usage, name)
        if self.on_spend is not None:
            self.on_spend(usage)

    def used_up(self) -> str | None:
        """The budget limit reached (spent plus calls in flight), or that refused a call."""
        budget, tracker = self.budget, self.tracker
        if budget is None or tracker is None:
            return None
        if self.refused is not None:
            return self.refused
        spent = self.usage
        if (
            budget.max_model_calls is not None
            and spent.model_calls + tracker.calls >= budget.max_model_calls
        ):
            return "max_model_calls"
        if (
            budget.max_tokens is not None
            and spent.total_tokens + tracker.tokens >= budget.max_tokens
        ):
            return "max_tokens"
        if (
            budget.max_cost_usd is not None
            and spent.cost_usd + tracker.cost_usd >= budget.max_cost_usd
        ):
            return "max_cost_usd"
        return None


_METER: ContextVar[BatchMeter | None] = ContextVar("typedmesh_batch_meter", default=None)


def current_meter() -> BatchMeter | None:
    """The meter of the batch this code runs in, if any."""
    return _METER.get()


@contextmanager
def using_meter(meter: BatchMeter | None) -> Iterator[None]:
    """Inside: model calls count against ``meter`` (and reserve against its budget)."""
    token = _METER.set(meter)
    try:
        yield
    finally:
        _METER.reset(token)


def metered(
    execute: Callable[[], Awaitable[ModelResponse]],
) -> Callable[[], Awaitable[ModelResponse]]:
    """``execute`` counting its usage on the batch's meter (as is, outside a batch)."""
    meter = _METER.get()
    if meter is None:
        return execute

    async def counted() -> ModelResponse:
        try:
            response = await execute()
        except ModelError as exc:
            if isinstance(exc.usage, Usage):
                meter.spend(exc.usage)
            raise
        meter.spend(response.usage)
        return response

    return counted
