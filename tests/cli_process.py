"""The ``typedmesh`` command run as a real process, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def typedmesh_in(
    cwd: Path, *args: str, journal: str = "chat.db"
) -> subprocess.CompletedProcess[str]:
    """``typedmesh ARGS --journal CWD/JOURNAL`` in ``cwd``, offline, 160 columns wide."""
    env = {**os.environ, "TYPEDMESH_ALLOW_NETWORK": "0", "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", *args, "--journal", str(cwd / journal)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )
