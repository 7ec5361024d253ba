"""Model calls: keyed when made, budget-reserved, retried with timer backoff, priced.

The effect key of a call is taken before anything awaits, and its retries
take derived keys (``model#0.2``), so keys follow the code, not the order in
which concurrent calls happen to fail. Backoff is a timer effect: a replay
does not sleep. Cost is priced by the *requested* model (the name the price
table knows); the name the server says served it is recorded beside it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from pydantic_core import PydanticSerializationError

from ..errors import BudgetExceeded, ModelError, TransientModelError, TypedMeshError
from ..models.base import Model, ModelRequest, ModelResponse, Usage
from ..models.offline import request_tokens, response_tokens
from ..models.pricing import cost_of
from ..models.resilience import BREAKERS, CircuitBreaker, CircuitOpen, Fallback, model_key
from .batch_calls import batched, call_batched, current_meter, metered
from .budget import Reservation
from .kinds import BREAKER, MODEL, RequestRecord
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .context import RunContext, RunState

__all__ = ["MAX_TOKENS_PER_CALL", "call_model"]

MAX_TOKENS_PER_CALL = 50_000_000
"""Usage above this in one response is not believed: the provider (or a fake) is lying."""


async def call_model(
    ctx: RunContext,
    run: RunState,
    model: Model,
    request: ModelRequest,
    retry: RetryPolicy,
    *,
    breaker: CircuitBreaker | None = None,
    attempt_timeout: float | None = None,
) -> ModelResponse:
    base = ctx.effect_key("model")  # taken now: retries derive from it, whatever the order
    if not isinstance(model, Fallback):
        return await _call(ctx, run, model, request, retry, base, breaker, attempt_timeout)
    models = model.models
    for index, candidate in enumerate(models):
        key = base if index == 0 else f"{base}.fb{index}"
        try:
            return await _call(ctx, run, candidate, request, retry, key, breaker, attempt_timeout)
        except Exception as exc:
            if index == len(models) - 1 or not model.falls_back(exc):
                raise
            ctx.record(
                "model.fallback",
                key=key,
                model=candidate.name,
                next=models[index + 1].name,
                error=f"{type(exc).__name__}: {exc}",
            )
    raise AssertionError("unreachable: the last model's failure is raised")


async def _call(
    ctx: RunContext,
    run: RunState,
    model: Model,
    request: ModelRequest,
    retry: RetryPolicy,
    base: str,
    breaker: CircuitBreaker | None,
    attempt_timeout: float | None,
) -> ModelResponse:
    """One model, retried on transient errors under keys derived from ``base``."""
    meta = {"model": model.name, "provider": model.provider}
    circuit = model_key(model) if breaker is not None else ""
    meter = current_meter()  # a batch's shared budget and spending, if in one
    attempt = 0
    while True:
        attempt += 1
        key = base if attempt == 1 else f"{base}.{attempt}"
        held: list[Reservation] = []
        shared: list[Reservation | None] = []  # held against a batch's shared budget

        def admit(
            record: RequestRecord,
            held: list[Reservation] = held,
            shared: list[Reservation | None] = shared,
            key: str = key,
        ) -> None:
            _check_deadline(run, key)
            tracker = run.tracker
            if tracker is None and meter is None:
                return
            size = len(record.text) if record.text else len(request.model_dump_json())
            try:
                if tracker is not None:
                    held.append(tracker.reserve(model.name, size, request.max_tokens))
                if meter is not None:
                    shared.append(meter.reserve(model.name, size, request.max_tokens))
            except BudgetExceeded as exc:
                ctx.record("budget.exceeded", limit=exc.limit, value=exc.value, spent=exc.spent)
                raise

        async def execute(key: str = key) -> ModelResponse:
            if batched(run, model):  # through the provider's batch API: the run may suspend
                return await call_batched(ctx, run, model, request, key)
            if breaker is None:
                return await _generate(model, request, attempt_timeout)
            try:
                response = await _generate(model, request, attempt_timeout)
            except ModelError:
                BREAKERS.failure(circuit, breaker)
                raise
            BREAKERS.success(circuit)
            return response

        try:
            if breaker is not None:
                # the breaker's answer depends on this process's history: journaled, so
                # a replay takes the same path without asking it
                state = run.effects.perform_sync(
                    ctx, BREAKER, f"{key}.breaker", lambda: BREAKERS.admit(circuit, breaker)
                )
                if state == "open":
                    ctx.record("model.circuit_open", key=key, model=model.name)
                    raise CircuitOpen(
                        f"model {model.name!r}: its circuit breaker is open after "
                        f"{breaker.failures} failures within {breaker.window_s:g} s; the call "
                        "was not made",
                        provider=model.provider,
                    )
            response: ModelResponse = await run.effects.perform(
                ctx, MODEL, key, request, metered(execute), meta=meta, admit=admit
            )
        except Exception as exc:
            if not isinstance(exc, CircuitOpen) and retry.should_retry(exc, attempt):
                delay = retry.delay(attempt, exc)
                ctx.record(
                    "model.retry",
                    key=key,
                    attempt=attempt,
                    error=f"{type(exc).__name__}: {exc}",
                    status=getattr(exc, "status", None),
                    error_type=getattr(exc, "error_type", None),
                    retry_after=getattr(exc, "retry_after", None),
                    delay_s=delay,
                )
                await ctx.sleep(delay, key=f"{base}.backoff{attempt}")
                continue
            raise
        finally:
            if held and run.tracker is not None:
                run.tracker.release(held[0])
            if shared and meter is not None:
                meter.release(shared[0])
        return response


def _check_deadline(run: RunState, key: str) -> None:
    if run.deadline is not None and time.monotonic() >= run.deadline:
        from ..errors import DeadlineExceeded

        raise DeadlineExceeded(f"the run's deadline passed before {key} could start")


async def _generate(
    model: Model, request: ModelRequest, attempt_timeout: float | None
) -> ModelResponse:
    try:
        if attempt_timeout is None:
            response = await model.generate(request)
        else:
            async with asyncio.timeout(attempt_timeout):
                response = await model.generate(request)
    except ModelError as exc:
        billed = exc.usage
        if billed is not None:  # an answer arrived, could not be used, and was billed
            _check_usage(model, billed)
            _estimate_missing(billed, request, None)
            billed.__dict__["cost_usd"] = cost_of(
                model.name, billed.input_tokens, billed.output_tokens
            )
            billed.__dict__["model_calls"] = 1
        raise
    except TypedMeshError:
        raise
    except TimeoutError as exc:
        after = "" if attempt_timeout is None else f" after {attempt_timeout:g} s"
        raise TransientModelError(f"model {model.name!r} timed out{after}") from exc
    except Exception as exc:
        raise ModelError(f"model {model.name!r} failed: {type(exc).__name__}: {exc}") from exc
    usage = response.usage
    _check_usage(model, usage)
    response = _storable(response)
    _estimate_missing(usage, request, response)
    fields = usage.__dict__  # plain counters: skip pydantic's validating setattr
    # priced by the model we asked for: a server naming itself "free" changes nothing
    fields["cost_usd"] = cost_of(model.name, usage.input_tokens, usage.output_tokens)
    fields["model_calls"] = 1
    return response


def _estimate_missing(usage: Usage, request: ModelRequest, response: ModelResponse | None) -> None:
    """A provider that reported no usage (some compatible servers leave it out of a
    stream, or out of every answer): estimate it from the text rather than count a
    call as free, which would let it slip past a budget. Marked ``estimated_calls``."""
    if usage.input_tokens or usage.output_tokens or not request.messages:
        return
    fields = usage.__dict__
    fields["input_tokens"] = request_tokens(request)
    fields["output_tokens"] = response_tokens(response) if response is not None else 0
    fields["estimated_calls"] = 1


def _check_usage(model: Model, usage: Usage) -> None:
    for name in ("input_tokens", "output_tokens"):
        value = getattr(usage, name)
        if not isinstance(value, int) or value < 0 or value > MAX_TOKENS_PER_CALL:
            raise ModelError(
                f"model {model.name!r} reported impossible usage: {name}={value!r}; "
                "the response is not used"
            )


def _storable(response: ModelResponse) -> ModelResponse:
    """A response whose text can be journaled: lone surrogates (a model may send
    ``"\\udc00"`` escapes) become U+FFFD in its text, and a tool call whose arguments
    hold one is passed on as undecodable, so the agent tells the model."""
    try:
        response.model_dump_json()
        return response
    except PydanticSerializationError:
        pass
    calls = []
    for call in response.tool_calls:
        try:
            json.dumps(call.arguments, ensure_ascii=False).encode()
            calls.append(call)
        except UnicodeEncodeError:
            escaped = json.dumps(call.arguments)  # ASCII: the surrogate as an escape
            calls.append(
                call.model_copy(
                    update={
                        "arguments": None,
                        "raw_arguments": f"text that is not valid Unicode: {escaped}",
                    }
                )
            )
    content = response.content
    if content is not None:
        content = content.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return response.model_copy(update={"content": content, "tool_calls": calls})
