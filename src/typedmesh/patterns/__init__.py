"""The four orchestration patterns. Each is a Step made of Steps, so they nest."""

from .conflicts import Compare, detect_conflicts
from .loop import Loop, loop
from .orchestrate import Orchestrate, orchestrate
from .parallel import Parallel, parallel
from .sequential import Sequential, sequential

__all__ = [
    "Compare",
    "Loop",
    "Orchestrate",
    "Parallel",
    "Sequential",
    "detect_conflicts",
    "loop",
    "orchestrate",
    "parallel",
    "sequential",
]
