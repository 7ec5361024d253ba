"""Test overrides: swap the models of a flow's agents without rebuilding it.

``with tm.override(models={"bull": m, "*": tm.SchemaModel()}):`` makes the
agent named ``bull`` answer with ``m`` and every other agent with a
``SchemaModel``, wherever they sit in a flow (inside patterns, behind a
``Fallback`` or a ``Cascade``: the agent's whole model is replaced). The
overrides live in a ``contextvars.ContextVar``, so they follow the code that
set them into every task it starts and stop at the ``with`` block's end:
concurrent tests (each in its own task or thread) never see each other's.

Nested blocks stack: the innermost block that names the agent (or has a
``"*"``) decides. ``flow=`` checks every name against the flow's agents, so a
typo fails loudly instead of silently overriding nothing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..models import resolve_model
from ..models.base import Model
from ..models.resilience import Fallback

if TYPE_CHECKING:
    from ..step import Step

__all__ = ["WILDCARD", "ModelChoice", "overridden_model", "override"]

ModelChoice = str | Model | Sequence[str | Model]
"""A model, a model string, or a list of them (a ``Fallback``, tried in order)."""

WILDCARD = "*"
"""The key that matches every agent the override does not name."""


@dataclass(slots=True)
class _Frame:
    models: dict[str, ModelChoice]
    resolved: dict[str, Model] = field(default_factory=dict)
    outer: _Frame | None = None

    def lookup(self, name: str) -> Model | None:
        frame: _Frame | None = self
        while frame is not None:
            for key in (name, WILDCARD):
                if key in frame.models:
                    return frame.model(key)
            frame = frame.outer
        return None

    def model(self, key: str) -> Model:
        found = self.resolved.get(key)
        if found is None:  # a string spec is resolved once per block, on first use
            spec = self.models[key]
            found = resolve_model(spec) if isinstance(spec, str | Model) else Fallback(*spec)
            self.resolved[key] = found
        return found


_CURRENT: contextvars.ContextVar[_Frame | None] = contextvars.ContextVar(
    "typedmesh_override", default=None
)


@contextmanager
def override(
    *,
    models: Mapping[str, ModelChoice],
    flow: Step[Any, Any] | None = None,
) -> Iterator[None]:
    """Within the block, the agents named in ``models`` answer with the given model.

    Keys are agent names, or ``"*"`` for every agent not named; values are a
    ``Model``, a model string (``"openai:gpt-4o-mini"``, resolved on first
    use) or a list of them (a ``Fallback``). ``flow`` (optional) must contain
    an agent of every name given. Nothing is rebuilt: the agents look their
    model up here at each call.
    """
    table = dict(models)
    for name, model in table.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"override: agent names must be strings, got {name!r}")
        choices = [model] if isinstance(model, str | Model) else model
        if not (isinstance(choices, list | tuple) and choices) or not all(
            isinstance(m, str | Model) for m in choices
        ):
            raise ConfigurationError(
                f"override: {name!r} must map to a Model, a model string or a list of "
                f"them, got {type(model).__name__}"
            )
    if flow is not None:
        agents = {s.name for s in flow.walk() if s.kind == "agent"}
        unknown = sorted(set(table) - agents - {WILDCARD})
        if unknown:
            raise ConfigurationError(
                f"override: flow {flow.name!r} has no agent named {', '.join(map(repr, unknown))} "
                f"(its agents: {', '.join(sorted(agents)) or 'none'})"
            )
    token = _CURRENT.set(_Frame(table, outer=_CURRENT.get()))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def overridden_model(agent: str) -> Model | None:
    """The model an enclosing ``override`` block gives the agent named ``agent``, if any."""
    frame = _CURRENT.get()
    return None if frame is None else frame.lookup(agent)
