"""The four orchestration patterns. Each is a Step made of Steps, so they nest."""

from .conflicts import Compare, detect_conflicts
from .loop import Loop, loop
from .orchestrate import Orchestrate, orchestrate
from .parallel import Parallel, parallel
from .reconcile import (
    Changes,
    Invariant,
    Reconcile,
    ReconcileReport,
    StateChange,
    Violation,
    invariant,
    reconcile,
)
from .route import InputSource, Route, Routed, Router, UnknownRoute, route
from .sequential import Sequential, sequential

__all__ = [
    "Changes",
    "Compare",
    "InputSource",
    "Invariant",
    "Loop",
    "Orchestrate",
    "Parallel",
    "Reconcile",
    "ReconcileReport",
    "Route",
    "Routed",
    "Router",
    "Sequential",
    "StateChange",
    "UnknownRoute",
    "Violation",
    "detect_conflicts",
    "invariant",
    "loop",
    "orchestrate",
    "parallel",
    "reconcile",
    "route",
    "sequential",
]
