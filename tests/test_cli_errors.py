"""A careless user at the command line: one line naming the mistake, the documented exit code.

Exit codes (docs/errors.md): 1 a run failed; 2 a usage, input or journal error.
Every case runs the real ``typedmesh`` process and checks that no traceback leaks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FLOW = textwrap.dedent("""
    from pydantic import BaseModel
    import typedmesh as tm

    class Question(BaseModel):
        text: str

    class Answer(BaseModel):
        answer: str

    answerer = tm.Agent("answerer", version="1.4.0", input=Question, output=Answer,
                        model=tm.ScriptedModel(lambda r: {"answer": "yes"}, name="gpt-4o-mini"))

    @tm.step
    def explode(a: Answer) -> Answer:
        raise ValueError("the user's step broke")

    flow = tm.sequential(answerer, name="qa")
    broken = tm.sequential(answerer, explode, name="broken")
""")

CONTRACT_FLOW = textwrap.dedent("""
    from pydantic import BaseModel
    import typedmesh as tm

    class A(BaseModel):
        x: int

    class B(BaseModel):
        y: str

    @tm.step
    def first(a: A) -> A:
        return a

    @tm.step
    def second(b: B) -> B:
        return b

    flow = tm.sequential(first, second)
""")

INPUT = '{"text": "ok?"}'


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "qa_flow.py").write_text(FLOW)
    return tmp_path


def typedmesh(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"TYPEDMESH_ALLOW_NETWORK": "0", "PATH": "/usr/bin:/bin", "COLUMNS": "80"},
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The error line, after checking the exit code and that no traceback was printed."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert "╭" not in done.stderr  # no rich traceback or usage box either
    first = done.stderr.splitlines()[0]
    assert first.startswith("error: "), done.stderr
    return first


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return typedmesh(cwd, "run", *args)


# --- flow targets -----------------------------------------------------------------------


def test_unknown_dotted_module(workdir: Path) -> None:
    line = one_line_error(run(workdir, "no.such.module:flow", "--input", INPUT), 2)
    assert "no module named 'no.such.module'" in line


def test_module_whose_import_fails_names_the_cause_and_the_line(workdir: Path) -> None:
    (workdir / "pkg").mkdir()
    (workdir / "pkg" / "__init__.py").write_text("")
    (workdir / "pkg" / "flows.py").write_text("import not_installed_anywhere\n")
    line = one_line_error(run(workdir, "pkg.flows:flow", "--input", INPUT), 2)
    assert "cannot load pkg.flows: ModuleNotFoundError" in line
    assert "not_installed_anywhere" in line and "pkg/flows.py:1" in line


def test_flow_file_with_a_syntax_error(workdir: Path) -> None:
    (workdir / "bad_syntax.py").write_text("import typedmesh\n\ndef f(:\n    pass\n")
    line = one_line_error(run(workdir, "bad_syntax.py:flow", "--input", INPUT), 2)
    assert "cannot load bad_syntax.py: SyntaxError" in line and "line 3" in line


def test_flow_file_that_is_not_utf8(workdir: Path) -> None:
    (workdir / "latin.py").write_bytes(b'name = "caf\xe9"\nflow = None\n')
    line = one_line_error(run(workdir, "latin.py:flow", "--input", INPUT), 2)
    assert "cannot load latin.py: SyntaxError" in line and "utf-8" in line


def test_flow_file_that_raises_contract_error_on_import(workdir: Path) -> None:
    (workdir / "contract.py").write_text(CONTRACT_FLOW)
    done = run(workdir, "contract.py:flow", "--input", "{}")
    line = one_line_error(done, 2)
    assert "cannot load contract.py: ContractError: sequential: 'second'" in line
    assert "(at contract.py:19)" in line
    assert "  - missing field 'y' (str)" in done.stderr  # the problems follow, indented
    as_json = json.loads(run(workdir, "contract.py:flow", "--input", "{}", "--json").stdout)
    assert as_json["error"] == "ContractError"
    assert as_json["problems"] == ["missing field 'y' (str)"]
    assert as_json["source"] == "first" and as_json["target"] == "second"


def test_a_directory_as_the_flow_file(workdir: Path) -> None:
    (workdir / "flows").mkdir()
    line = one_line_error(run(workdir, "flows/:flow", "--input", INPUT), 2)
    assert "flows/ is a directory" in line


def test_bad_target_shapes_are_one_line_usage_errors(workdir: Path) -> None:
    assert "expected MODULE:ATTR" in one_line_error(run(workdir, "qa_flow", "--input", "{}"), 2)
    line = one_line_error(run(workdir, "qa_flow.py:nothing", "--input", INPUT), 2)
    assert "qa_flow.py has no attribute 'nothing'" in line
    line = one_line_error(run(workdir, "missing.py:flow", "--input", INPUT), 2)
    assert "no such file: missing.py" in line


# --- --input and --intent ---------------------------------------------------------------


def test_input_at_a_missing_file(workdir: Path) -> None:
    line = one_line_error(run(workdir, "qa_flow.py:flow", "--input", "@missing.json"), 2)
    assert line == "error: --input @missing.json: no such file"


def test_input_at_a_directory(workdir: Path) -> None:
    (workdir / "inputs").mkdir()
    line = one_line_error(run(workdir, "qa_flow.py:flow", "--input", "@inputs"), 2)
    assert line == "error: --input @inputs: is a directory, not a file"


def test_input_file_that_is_not_utf8(workdir: Path) -> None:
    (workdir / "latin.json").write_bytes(b'{"text": "caf\xe9"}')
    line = one_line_error(run(workdir, "qa_flow.py:flow", "--input", "@latin.json"), 2)
    assert line == "error: --input @latin.json: not UTF-8 text (byte 0xe9 at offset 13)"


def test_input_file_that_is_not_json(workdir: Path) -> None:
    (workdir / "input.json").write_text("{text: 1}")
    line = one_line_error(run(workdir, "qa_flow.py:flow", "--input", "@input.json"), 2)
    assert line.startswith("error: --input @input.json is not valid JSON")


def test_input_that_does_not_fit_the_flow(workdir: Path) -> None:
    line = one_line_error(run(workdir, "qa_flow.py:flow", "--input", '{"txt": 1}'), 2)
    assert line.startswith("error: InputValidationError: input for 'qa' does not fit Question")


def test_intent_that_fails_validation(workdir: Path) -> None:
    done = run(workdir, "qa_flow.py:flow", "--input", INPUT, "--intent", '{"gol": "x"}')
    assert one_line_error(done, 2) == "error: --intent does not fit Intent: goal: Field required"
    done = run(workdir, "qa_flow.py:flow", "--input", INPUT, "--intent", "@nope.json")
    assert one_line_error(done, 2) == "error: --intent @nope.json: no such file"
    as_json = run(workdir, "qa_flow.py:flow", "--input", INPUT, "--intent", "[]", "--json")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"] == "UsageError"


# --- journal and budget options ----------------------------------------------------------


def test_journal_path_that_cannot_be_created(workdir: Path) -> None:
    (workdir / "a_file").write_text("not a directory")
    done = run(workdir, "qa_flow.py:flow", "--input", INPUT, "--journal", "a_file/runs.db")
    line = one_line_error(done, 2)
    assert "journal a_file/runs.db" in line


def test_journal_path_that_is_a_directory(workdir: Path) -> None:
    (workdir / "journals").mkdir()
    done = run(workdir, "qa_flow.py:flow", "--input", INPUT, "--journal", "journals")
    assert "journals" in one_line_error(done, 2)
    assert "journals" in one_line_error(typedmesh(workdir, "runs", "--journal", "journals"), 2)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-cost", "-1"),
        ("--max-tokens", "-5"),
        ("--max-model-calls", "-1"),
        ("--max-cost", "nan"),
    ],
)
def test_negative_budget(workdir: Path, option: str, value: str) -> None:
    done = run(workdir, "qa_flow.py:flow", "--input", INPUT, option, value)
    assert one_line_error(done, 2).startswith(f"error: {option} must be >= 0, got ")
    as_json = run(workdir, "qa_flow.py:flow", "--input", INPUT, option, value, "--json")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"] == "UsageError"
    assert not (workdir / ".typedmesh").exists()  # nothing ran, nothing was journaled


def test_unknown_run_is_one_line(workdir: Path) -> None:
    run(workdir, "qa_flow.py:flow", "--input", INPUT)
    line = one_line_error(typedmesh(workdir, "trace", "nope"), 2)
    assert line.startswith("error: RunNotFound: ") and "'nope'" in line


def test_resume_usage_errors_are_one_line(workdir: Path) -> None:
    done = typedmesh(workdir, "resume", "r1", "--retry-in-doubt", "--skip-in-doubt")
    assert "exclude each other" in one_line_error(done, 2)
    done = typedmesh(workdir, "replay", "r1", "--swap", "no-equals-sign")
    assert "--swap expects NAME=MODULE:ATTR" in one_line_error(done, 2)


# --- a user step that raises ---------------------------------------------------------------


def test_a_plain_exception_in_a_user_step_exits_1_with_run_id_and_partial_trace(
    workdir: Path,
) -> None:
    done = run(workdir, "qa_flow.py:broken", "--input", INPUT, "--run-id", "boom-1")
    line = one_line_error(done, 1)
    assert "ValueError" in line and "the user's step broke" in line
    assert line.endswith("(run boom-1)")
    assert "answerer@1.4.0" in done.stderr and "ok" in done.stderr  # the partial trace
    assert "explode" in done.stderr and "failed" in done.stderr
    assert "run id: boom-1" in done.stderr
    assert "raised at qa_flow.py:" in done.stderr  # the one frame worth showing


def test_a_plain_exception_in_a_user_step_with_json(workdir: Path) -> None:
    done = run(workdir, "qa_flow.py:broken", "--input", INPUT, "--run-id", "boom-2", "--json")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    error = json.loads(done.stdout)
    assert error["run_id"] == "boom-2"
    assert error["error"] in {"StepFailed", "ValueError"}
    assert "the user's step broke" in error["message"]
    partial = error["partial"]
    assert partial["status"] == "failed"
    answerer, explode = partial["children"]
    assert answerer["status"] == "ok" and explode["status"] == "failed"
    if error["error"] == "StepFailed":  # the runtime's own partial trace keeps step outputs
        assert answerer["output"] == {"answer": "yes"}
        assert error["error_type"] == "ValueError" and error["step_path"] == "broken/explode"


def test_a_plain_exception_without_a_journal_still_names_the_run(workdir: Path) -> None:
    done = run(workdir, "qa_flow.py:broken", "--input", INPUT, "--no-journal", "--run-id", "nj")
    line = one_line_error(done, 1)
    assert "the user's step broke" in line and line.endswith("(run nj)")
