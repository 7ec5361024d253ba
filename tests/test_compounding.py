"""The compounding the math predicts is what a faulty chain measures: a small,
deterministic sample (seeded FaultyModels) lands within sampling error of
``tm.reliability``'s prediction, with and without output retries."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from pydantic import BaseModel

import typedmesh as tm

STEPS = 5
RATE = 0.2  # a failure rate high enough that 80 runs tell the cases apart


class Msg(BaseModel):
    text: str
    n: int


def chain(run: int, retries: int) -> tm.Step[Msg, Msg]:
    agents = [
        tm.Agent(
            f"agent{i}",
            input=Msg,
            output=Msg,
            model=tm.FaultyModel(
                tm.SchemaModel(seed=i), faults={"wrong_type": RATE}, seed=run * 100 + i
            ),
            output_retries=retries,
            retry=tm.RetryPolicy(max_attempts=1),
        )
        for i in range(STEPS)
    ]
    return tm.sequential(*agents, name=f"chain{retries}")


@pytest.mark.parametrize("retries", [0, 1])
def test_measured_compounding_is_within_sampling_error_of_the_prediction(
    tmp_path: Path, retries: int
) -> None:
    runs = 80
    journal = tmp_path / "runs.db"
    for run in range(runs):
        with contextlib.suppress(tm.OutputValidationError):
            tm.run(
                chain(run, retries),
                {"text": f"t{run}", "n": run},
                journal=journal,
                run_id=f"r{run}",
            )
    predicted = tm.reliability.chain(tm.reliability.with_retries(1 - RATE, retries), STEPS)
    report = tm.reliability.measure(journal)
    measured = report.end_to_end
    low, high = tm.reliability.wilson(round(measured.value * runs), runs)
    assert low <= predicted <= high, (predicted, measured)
    assert len(report.agents) == STEPS and report.end_to_end.trials == runs
