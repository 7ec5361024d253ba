"""Provider batch APIs: model requests sent at about half price, answered within hours.

OpenAI's Batch API (a JSONL file of requests uploaded with ``purpose="batch"``,
then ``client.batches.create``; results in an output file and an error file)
and Anthropic's Message Batches (``client.messages.batches.create``, then
``retrieve`` and ``results``) answer asynchronously, within 24 hours, at half
the list price. This module speaks both through the official SDK clients an
``OpenAIModel`` / ``AnthropicModel`` already builds (one per event loop, see
``_sdk.py``); the runtime turns a model call into a waiting effect around it
(``runtime/batch_calls.py``), so the process may exit while the provider works.

* ``submit(model, request, custom_id)``: the request joins a provider batch.
  Requests submitted within ``SUBMIT_WINDOW`` seconds of each other by the same
  model in the same event loop share one provider batch (a ``tm.batch`` of
  many items makes one upload, not one per item), up to ``MAX_REQUESTS``.
  It returns a handle: ``{"provider", "model", "batch_id", "custom_id"}``.
* ``collect(model, handle)``: the answer as a ``ModelResponse``, ``None``
  while the provider batch is still running, or the request's own failure as
  a ``ModelError`` (``TransientModelError`` when sending it again may help:
  rate limits, overload, an expired or cancelled batch). Results of an ended
  batch are fetched once per process and kept for every request in it.

Prices: ``BATCH_DISCOUNT`` is the share of the list price (``pricing.py``)
a batched call costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import OrderedDict
from typing import Any

from ..errors import ConfigurationError, ModelError, TransientModelError
from . import check_network_allowed
from ._sdk import SDKModel, map_sdk_error
from .base import Model, ModelRequest, ModelResponse
from .pricing import cost_of

__all__ = [
    "BATCH_DISCOUNT",
    "MAX_REQUESTS",
    "SUBMIT_WINDOW",
    "batch_cost",
    "collect",
    "custom_id_for",
    "forget_results",
    "submit",
    "supports",
]

BATCH_DISCOUNT: dict[str, float] = {"openai": 0.5, "anthropic": 0.5}
"""The share of the list price a call made through a provider's batch API costs.

Both providers publish batch prices at half their standard rates: OpenAI's
pricing page lists the Batch API at "50% off inputs and outputs" (results
within 24 hours), and Anthropic's batch-processing guide says "all usage is
charged at 50% of the standard API prices". Change an entry for a negotiated
rate; ``pricing.PRICES`` stays the list price."""

SUBMIT_WINDOW = 0.2
"""Seconds a submitted request waits for others to join its provider batch."""

MAX_WAIT = 5.0
"""Longest a request waits in the window, however many keep arriving."""

MAX_REQUESTS = 10_000
"""Requests in one provider batch (OpenAI allows 50,000 per file, Anthropic 100,000)."""

OPENAI_ENDPOINT = "/v1/chat/completions"

_TRANSIENT_ANTHROPIC = {
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
    "gateway_timeout_error",
}


def supports(model: Model) -> bool:
    """Whether ``model`` can be called through a provider batch (OpenAI or Anthropic SDK)."""
    return isinstance(model, SDKModel) and model.provider in BATCH_DISCOUNT


def custom_id_for(run_id: str, key: str) -> str:
    """The request's id inside a provider batch: the same for the same run and effect key.

    Anthropic accepts ``[a-zA-Z0-9_-]{1,64}``; a digest fits both providers.
    """
    return "tm_" + hashlib.sha256(f"{run_id}\x00{key}".encode()).hexdigest()[:48]


def batch_cost(model: str, provider: str, input_tokens: int, output_tokens: int) -> float:
    """The dollar cost of one batched call: the list price times ``BATCH_DISCOUNT``."""
    return cost_of(model, input_tokens, output_tokens) * BATCH_DISCOUNT.get(provider, 1.0)


# -- submitting -------------------------------------------------------------------


class _Window:
    """Requests waiting to be sent together: (custom_id, params, future)."""

    __slots__ = ("entries", "first", "last", "sent", "wake")

    def __init__(self, now: float) -> None:
        self.entries: list[tuple[str, dict[str, Any], asyncio.Future[str]]] = []
        self.first = self.last = now
        self.sent = False
        self.wake = asyncio.Event()


_WINDOWS: dict[tuple[int, int], _Window] = {}
_TASKS: set[asyncio.Task[None]] = set()


async def submit(model: Model, request: ModelRequest, custom_id: str) -> dict[str, str]:
    """Add ``request`` to a provider batch; its handle once the batch is created."""
    sdk = _sdk_model(model)
    params = _params(sdk, request)  # a request the provider cannot take fails here, alone
    loop = asyncio.get_running_loop()
    slot = (id(loop), id(sdk))
    window = _WINDOWS.get(slot)
    if window is None or window.sent:
        window = _WINDOWS[slot] = _Window(loop.time())
        task = loop.create_task(_send_when_full(sdk, slot, window))
        _TASKS.add(task)  # the loop holds tasks only weakly
        task.add_done_callback(_TASKS.discard)
    future: asyncio.Future[str] = loop.create_future()
    window.entries.append((custom_id, params, future))
    window.last = loop.time()
    if len(window.entries) >= MAX_REQUESTS:
        window.wake.set()
    batch_id = await asyncio.shield(future)  # a cancelled caller leaves the others their batch
    return {
        "provider": sdk.provider,
        "model": sdk.name,
        "batch_id": batch_id,
        "custom_id": custom_id,
    }


async def _send_when_full(sdk: SDKModel, slot: tuple[int, int], window: _Window) -> None:
    loop = asyncio.get_running_loop()
    while not window.wake.is_set():
        now = loop.time()
        due = min(window.last + SUBMIT_WINDOW, window.first + MAX_WAIT)
        if now >= due:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(window.wake.wait(), due - now)
    window.sent = True
    if _WINDOWS.get(slot) is window:
        del _WINDOWS[slot]
    entries = [(c, p, f) for c, p, f in window.entries if not f.done()]
    if not entries:
        return
    try:
        batch_id = await _create(sdk, [(c, p) for c, p, _ in entries])
    except BaseException as exc:
        for _, _, future in entries:
            if not future.done():
                future.set_exception(exc)
        if not isinstance(exc, Exception):
            raise
        return
    for _, _, future in entries:
        if not future.done():
            future.set_result(batch_id)


def _sdk_model(model: Model) -> SDKModel:
    if not supports(model):
        raise ConfigurationError(
            f"model {model.name!r} ({type(model).__name__}) has no provider batch API: "
            "provider batches need an OpenAIModel or AnthropicModel"
        )
    assert isinstance(model, SDKModel)
    return model


def _params(sdk: SDKModel, request: ModelRequest) -> dict[str, Any]:
    params: dict[str, Any] = sdk._params(request)  # type: ignore[attr-defined]
    extra = params.pop("extra_body", None)  # a batch line has no per-request SDK options
    if isinstance(extra, dict):
        params.update(extra)
    return params


async def _create(sdk: SDKModel, entries: list[tuple[str, dict[str, Any]]]) -> str:
    client = await sdk._client()
    check_network_allowed(str(client.base_url))
    if sdk.provider == "openai":
        import openai

        lines = [
            json.dumps(
                {"custom_id": cid, "method": "POST", "url": OPENAI_ENDPOINT, "body": params},
                ensure_ascii=False,
            )
            for cid, params in entries
        ]
        data = ("\n".join(lines) + "\n").encode()
        try:
            uploaded = await client.files.create(
                file=("typedmesh-batch.jsonl", data, "application/jsonl"), purpose="batch"
            )
            batch = await client.batches.create(
                input_file_id=uploaded.id,
                endpoint=OPENAI_ENDPOINT,
                completion_window="24h",
                metadata={"created_by": "typedmesh"},
            )
        except openai.OpenAIError as exc:
            raise map_sdk_error(openai, exc, provider=sdk.provider, model=sdk.name) from exc
        return str(batch.id)
    import anthropic

    try:
        created = await client.messages.batches.create(
            requests=[{"custom_id": cid, "params": params} for cid, params in entries]
        )
    except anthropic.AnthropicError as exc:
        raise map_sdk_error(anthropic, exc, provider=sdk.provider, model=sdk.name) from exc
    return str(created.id)


# -- collecting -------------------------------------------------------------------

_RESULTS: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
"""Results of ended provider batches: (provider, base URL, batch id) -> custom_id -> result."""
_KEEP = 64
_INFLIGHT: dict[tuple[int, str, str, str], asyncio.Future[dict[str, Any] | None]] = {}


def forget_results() -> None:
    """Drop the results kept from ended provider batches (they are fetched again on need)."""
    _RESULTS.clear()


async def collect(model: Model, handle: dict[str, Any]) -> ModelResponse | None:
    """The answer to the request ``handle`` names; None while its batch still runs.

    Raises the request's own failure as ``ModelError`` (``TransientModelError``
    when sending it again may help), with any billed usage on it.
    """
    sdk = _sdk_model(model)
    client = await sdk._client()
    check_network_allowed(str(client.base_url))
    batch_id, custom_id = str(handle["batch_id"]), str(handle["custom_id"])
    slot = (sdk.provider, str(client.base_url), batch_id)
    results = _RESULTS.get(slot)
    if results is None:
        results = await _shared_fetch(sdk, client, slot)
        if results is None:
            return None
        _RESULTS[slot] = results
        while len(_RESULTS) > _KEEP:
            _RESULTS.popitem(last=False)
    result = results.get(custom_id)
    where = f"{sdk.name}: provider batch {batch_id}"
    if sdk.provider == "openai":
        return _openai_result(sdk, where, custom_id, result, results)
    return _anthropic_result(sdk, where, custom_id, result)


async def _shared_fetch(
    sdk: SDKModel, client: Any, slot: tuple[str, str, str]
) -> dict[str, Any] | None:
    """Fetch a batch's state (and results once ended); concurrent askers share one fetch."""
    loop = asyncio.get_running_loop()
    key = (id(loop), *slot)
    running = _INFLIGHT.get(key)
    if running is not None:
        return await asyncio.shield(running)
    future: asyncio.Future[dict[str, Any] | None] = loop.create_future()
    _INFLIGHT[key] = future
    try:
        fetch = _fetch_openai if sdk.provider == "openai" else _fetch_anthropic
        results = await fetch(sdk, client, slot[2])
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: no "never retrieved" warning when nobody shared it
        raise
    finally:
        _INFLIGHT.pop(key, None)
    future.set_result(results)
    return results


async def _fetch_openai(sdk: SDKModel, client: Any, batch_id: str) -> dict[str, Any] | None:
    import openai

    try:
        batch = await client.batches.retrieve(batch_id)
        status = str(batch.status)
        if status in ("validating", "in_progress", "finalizing", "cancelling"):
            return None
        results: dict[str, Any] = {}
        if status == "failed":
            errors = getattr(getattr(batch, "errors", None), "data", None) or []
            reasons = "; ".join(
                f"{getattr(e, 'code', '') or 'error'}: {getattr(e, 'message', '')}" for e in errors
            )
            results["__batch__"] = {"status": status, "reason": reasons or "no reason given"}
            return results
        for file_id in (batch.error_file_id, batch.output_file_id):  # output wins a tie
            if not file_id:
                continue
            content = await client.files.content(file_id)
            for line in content.text.splitlines():
                if line.strip():
                    entry = json.loads(line)
                    results[str(entry.get("custom_id"))] = entry
        results["__batch__"] = {"status": status}
        return results
    except openai.OpenAIError as exc:
        raise map_sdk_error(openai, exc, provider=sdk.provider, model=sdk.name) from exc


async def _fetch_anthropic(sdk: SDKModel, client: Any, batch_id: str) -> dict[str, Any] | None:
    import anthropic

    try:
        batch = await client.messages.batches.retrieve(batch_id)
        if str(batch.processing_status) != "ended":
            return None
        results: dict[str, Any] = {"__batch__": {"status": "ended"}}
        decoder = await client.messages.batches.results(batch_id)
        async for entry in decoder:
            results[str(entry.custom_id)] = entry.result
        return results
    except anthropic.AnthropicError as exc:
        raise map_sdk_error(anthropic, exc, provider=sdk.provider, model=sdk.name) from exc


class _Obj:
    """A JSON object read by attribute, as the SDK's response types are (missing: None)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        value = self._data.get(name)
        if isinstance(value, dict):
            return _Obj(value)
        if isinstance(value, list):
            return [_Obj(v) if isinstance(v, dict) else v for v in value]
        return value


def _openai_result(
    sdk: SDKModel, where: str, custom_id: str, entry: Any, results: dict[str, Any]
) -> ModelResponse:
    batch = results.get("__batch__") or {}
    status = batch.get("status")
    if status == "failed":
        raise ModelError(
            f"{where} failed: {batch.get('reason')}",
            error_type="batch_failed",
            provider=sdk.provider,
        )
    if not isinstance(entry, dict):
        raise TransientModelError(
            f"{where} ended ({status}) without a result for this request",
            error_type=f"batch_{status}",
            provider=sdk.provider,
        )
    response = entry.get("response") or {}
    code = response.get("status_code") if isinstance(response, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    if code == 200 and isinstance(body, dict):
        answer: ModelResponse = sdk._response(_Obj(body))  # type: ignore[attr-defined]
        return answer
    error = entry.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
    error_type = str(error.get("type") or error.get("code") or "") or None
    message = str(error.get("message") or f"status {code}")
    transient = (isinstance(code, int) and (code in (408, 409, 429) or code >= 500)) or (
        code is None and error_type in ("batch_expired", "batch_cancelled")
    )
    kind = TransientModelError if transient else ModelError
    raise kind(
        f"{where}: {message}",
        status=code if isinstance(code, int) else None,
        error_type=error_type,
        provider=sdk.provider,
    )


def _anthropic_result(sdk: SDKModel, where: str, custom_id: str, result: Any) -> ModelResponse:
    if result is None:
        raise TransientModelError(
            f"{where} ended without a result for this request",
            error_type="batch_missing",
            provider=sdk.provider,
        )
    kind = str(getattr(result, "type", ""))
    if kind == "succeeded":
        answer: ModelResponse = sdk._response(result.message)  # type: ignore[attr-defined]
        return answer
    if kind == "errored":
        inner = getattr(getattr(result, "error", None), "error", None)
        error_type = str(getattr(inner, "type", "") or "api_error")
        message = str(getattr(inner, "message", "") or "errored")
        failure = TransientModelError if error_type in _TRANSIENT_ANTHROPIC else ModelError
        raise failure(f"{where}: {message}", error_type=error_type, provider=sdk.provider)
    # canceled, expired: never processed, so sending it again may work
    raise TransientModelError(
        f"{where}: the request was {kind or 'not processed'}",
        error_type=f"batch_{kind or 'unknown'}",
        provider=sdk.provider,
    )
