"""Dependencies: what a run's steps and tools need from the outside (a database, a client).

``tm.run(flow, input, deps=DbDeps(db=...))`` hands one object to the run;
every step and tool reaches it as ``ctx.deps`` (typed: ``ctx.deps_as(DbDeps)``),
so tools stop reaching for module globals. A step declares the type it
needs with a ``deps_type`` attribute (``Agent(..., deps=DbDeps)`` sets it);
the run checks the object against every declared type before anything runs.

Deps are never journaled (a connection has no JSON), but their type is part
of the flow's identity: its qualified name is recorded in ``run.started``, and
a resume or replay whose flow or deps name another type is refused. A resume
needs ``deps=`` again; a strict replay serves every model and tool call from
the journal, so it needs them only when a step reads ``ctx.deps`` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..step import Step

__all__ = ["DepsError", "check_deps", "declared_deps", "same_deps_type", "type_name"]


class DepsError(ConfigurationError):
    """A run's deps do not fit: missing, of the wrong type, or not the type recorded.

    Raised before anything runs (nothing is journaled). ``expected`` and
    ``got`` are qualified type names (``got`` is None when no deps were given).
    """

    def __init__(self, message: str, *, expected: str | None, got: str | None) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


def type_name(tp: type[Any]) -> str:
    """A type's qualified name, as ``run.started`` records it: ``module:QualName``."""
    return f"{tp.__module__}:{tp.__qualname__}"


def same_deps_type(a: str | None, b: str | None) -> bool:
    """Whether two recorded deps type names name the same types. A type defined in a
    script is ``__main__:Name`` there and ``module:Name`` when the CLI imports the
    script to resume it: against ``__main__``, the qualified names are compared."""
    if a is None or b is None:
        return a is b
    left, right = a.split(" & "), b.split(" & ")
    if len(left) != len(right):
        return False
    for x, y in zip(sorted(left, key=_qualname), sorted(right, key=_qualname), strict=True):
        if x == y:
            continue
        if "__main__" not in (x.partition(":")[0], y.partition(":")[0]):
            return False
        if _qualname(x) != _qualname(y):
            return False
    return True


def _qualname(name: str) -> str:
    return name.partition(":")[2]


def declared_deps(flow: Step[Any, Any]) -> dict[str, type[Any]]:
    """The deps types the flow's steps declare, by qualified name (sorted)."""
    found: dict[str, type[Any]] = {}
    for step in flow.walk():
        tp = getattr(step, "deps_type", None)
        if tp is None:
            continue
        if not isinstance(tp, type):
            raise ConfigurationError(f"step {step.name!r}: deps_type must be a class, got {tp!r}")
        found[type_name(tp)] = tp
    return dict(sorted(found.items()))


def check_deps(
    flow: Step[Any, Any],
    deps: Any,
    *,
    mode: Literal["run", "resume", "replay"] = "run",
    recorded: str | None = None,
) -> str | None:
    """The deps type name to record for ``flow`` run with ``deps``; ``DepsError`` if
    they do not fit.

    The name is the declared type's (several declared types: their names,
    joined by `` & ``), else the deps object's own type; None for a run
    without deps. On resume and replay it must be ``recorded``, the name the
    run began with. A resume of a run that had deps needs them again; a
    replay may go without (a step that reads ``ctx.deps`` then says so).
    """
    declared = declared_deps(flow)
    if deps is not None:
        for expected, tp in declared.items():
            if not isinstance(deps, tp):
                got = type_name(type(deps))
                raise DepsError(
                    f"flow {flow.name!r} needs deps of type {expected}, got {got}",
                    expected=expected,
                    got=got,
                )
    wanted = " & ".join(declared) or None
    name: str | None = wanted or (None if deps is None else type_name(type(deps)))
    if mode == "run":
        if wanted is not None and deps is None:
            raise DepsError(
                f"flow {flow.name!r} needs deps of type {wanted}: pass deps=",
                expected=wanted,
                got=None,
            )
        return name
    if deps is None:
        if mode == "resume" and (wanted or recorded):
            needed = recorded or wanted
            raise DepsError(
                f"the run was started with deps of type {needed}: deps are not journaled, "
                "so a resume needs deps= again",
                expected=needed,
                got=None,
            )
        if wanted is None or same_deps_type(wanted, recorded):
            return recorded
        name = wanted  # a replay without deps: the flow's declared type still counts
    if not same_deps_type(name, recorded):
        raise DepsError(
            f"the run was started with deps of type {recorded or 'none'}, this {mode} "
            f"has {name or 'none'}: the deps type is part of the flow's identity "
            "(use the flow and deps the run was made with)",
            expected=recorded,
            got=name,
        )
    return name
