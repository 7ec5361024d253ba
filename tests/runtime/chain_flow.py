"""A five-agent chain with no tools, for crash tests: every model call is billed to a file.

Set BILL_FILE to where each model call appends ``billed AGENT``; PAUSE_AT=AGENT
makes that agent's model call print ``PAUSED`` and wait to be killed;
SLOW_AT=AGENT with SLOW_S makes it take that long.

Usage: ``python chain_flow.py run|resume JOURNAL RUN_ID``; exit 4 on LeaseHeld.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel

import typedmesh as tm
from typedmesh.models.base import ModelRequest


class Note(BaseModel):
    text: str


def billed_model(name: str) -> tm.ScriptedModel:
    def respond(request: ModelRequest) -> str:
        with Path(os.environ["BILL_FILE"]).open("a") as f:
            f.write(f"billed {name}\n")
        if os.environ.get("PAUSE_AT") == name:
            print("PAUSED", name, flush=True)
            time.sleep(120)
        if os.environ.get("SLOW_AT") == name:
            time.sleep(float(os.environ.get("SLOW_S", "1")))
        text = request.input_data()["text"]
        return json.dumps({"text": f"{text}+{name}"})

    return tm.ScriptedModel(respond)


flow = tm.sequential(
    *(tm.Agent(f"a{i}", input=Note, output=Note, model=billed_model(f"a{i}")) for i in range(1, 6)),
    name="chain",
)


if __name__ == "__main__":
    mode, journal, run_id = sys.argv[1:4]
    try:
        if mode == "run":
            result = tm.run(flow, {"text": "x"}, journal=journal, run_id=run_id)
        else:
            result = tm.resume(run_id, flow, journal=journal)
    except tm.LeaseHeld as exc:
        print("LEASEHELD", exc.owner, flush=True)
        sys.exit(4)
    print("OK", result.output.text, flush=True)
