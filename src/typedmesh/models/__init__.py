"""Models: the protocol, providers resolved from strings, and offline doubles.

``resolve_model("openai:gpt-4o-mini")`` imports the provider lazily, so
``import typedmesh`` never pays for an SDK it does not use.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigurationError, ModelError
from ._sdk import default_timeout, is_loopback, set_default_timeout
from .base import Message, Model, ModelRequest, ModelResponse, ToolCall, ToolSchema, Usage
from .faults import FAULTS, Fault, FaultyModel, InjectedTool, Injection
from .resilience import Cascade, CircuitBreaker, Fallback

__all__ = [
    "ALLOW_NETWORK",
    "FAULTS",
    "Cascade",
    "CircuitBreaker",
    "Fallback",
    "Fault",
    "FaultyModel",
    "InjectedTool",
    "Injection",
    "Message",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ToolCall",
    "ToolSchema",
    "Usage",
    "check_network_allowed",
    "default_timeout",
    "model_from_env",
    "resolve_model",
    "set_default_timeout",
]

ALLOW_NETWORK: bool = os.environ.get("TYPEDMESH_ALLOW_NETWORK", "1") != "0"
"""Kill switch for calls to non-loopback hosts; the test suite sets it to False."""


def check_network_allowed(base_url: str | None) -> None:
    """Refuse a call to a remote host while the kill switch is off.

    Loopback servers (a local vLLM, the tests' fake provider) are always allowed.
    """
    if globals()["ALLOW_NETWORK"]:  # read live: tests patch the module attribute
        return
    if is_loopback(base_url):
        return
    raise ModelError(
        f"network calls are disabled (typedmesh.models.ALLOW_NETWORK is False); "
        f"refusing a call to {base_url or 'the default hosted endpoint'}"
    )


def model_from_env(offline: Model, variable: str = "TYPEDMESH_MODEL") -> str | Model:
    """``offline`` unless the environment names a live model (e.g. ``openai:gpt-4o-mini``).

    How the examples run offline by default and against a real model on demand.
    """
    return os.environ.get(variable) or offline


def resolve_model(model: str | Model, **options: Any) -> Model:
    """Turn ``"provider:name"`` into a Model; pass a Model object through.

    Providers: ``openai:NAME`` (any OpenAI-compatible server through
    ``OPENAI_BASE_URL``), ``anthropic:NAME``, and ``schema`` / ``schema:SEED``
    for the offline SchemaModel. ``options`` go to the provider, e.g.
    ``resolve_model("openai:gpt-4o", timeout=20)``; a model without ``timeout``
    follows ``set_default_timeout()`` / ``TYPEDMESH_MODEL_TIMEOUT``.
    """
    if not isinstance(model, str):
        return model
    provider, _, name = model.partition(":")
    if provider == "openai" and name:
        from .openai import OpenAIModel

        return OpenAIModel(name, **options)
    if provider == "anthropic" and name:
        from .anthropic import AnthropicModel

        return AnthropicModel(name, **options)
    if provider == "schema":
        from .offline import SchemaModel

        return SchemaModel(seed=int(name) if name else 0)
    raise ConfigurationError(
        f"unknown model string {model!r}: use 'openai:NAME', 'anthropic:NAME' or 'schema[:SEED]'"
    )
