"""The command line with plain-text flows: ``--input`` is the text, the output is shown as text."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from test_cli import typedmesh

FLOW = textwrap.dedent("""
    import typedmesh as tm

    def reply(request):
        return "You said: " + request.messages[-1].content

    echo = tm.Agent("echo", input=str, output=str, model=tm.ScriptedModel(reply, name="gpt-4o"))

    @tm.step
    def count(text: str) -> str:
        return f"{len(text)} characters"

    flow = tm.sequential(echo, count, name="measure")
""")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def text_flow(tmp_path: Path) -> Path:
    path = tmp_path / "text_flow.py"
    path.write_text(FLOW)
    return path


def test_a_text_flow_takes_the_input_verbatim_and_prints_text(text_flow: Path) -> None:
    done = typedmesh("run", f"{text_flow}:echo", "--input", "where is my parcel?")
    assert done.returncode == 0, done.stderr
    assert "You said: where is my parcel?" in done.stdout
    assert '"text"' not in done.stdout  # shown as text, not as {"text": ...}


def test_text_input_from_a_file_keeps_newlines_and_braces(text_flow: Path, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("line one\n{not json}\n", encoding="utf-8")
    done = typedmesh("run", f"{text_flow}:echo", "--input", f"@{note}", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"] == {"text": "You said: line one\n{not json}"}


def test_a_json_object_with_text_is_the_text_field(text_flow: Path) -> None:
    done = typedmesh("run", f"{text_flow}:flow", "--input", '{"text": "abc"}', "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"] == {"text": "13 characters"}


def test_a_text_run_resumes_replays_and_traces(text_flow: Path) -> None:
    done = typedmesh("run", f"{text_flow}:flow", "--input", "hello", "--run-id", "t-1")
    assert done.returncode == 0, done.stderr
    assert "15 characters" in done.stdout
    replayed = typedmesh("replay", "t-1", "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["output"] == {"text": "15 characters"}
    trace = typedmesh("trace", "t-1")
    assert trace.returncode == 0 and "echo" in trace.stdout and "count" in trace.stdout


def test_a_batch_of_a_text_flow_takes_json_strings(text_flow: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "notes.jsonl"
    inputs.write_text('"first note"\n{"text": "second"}\n42\n["no"]\n', encoding="utf-8")
    done = typedmesh(
        "batch", f"{text_flow}:echo", "--inputs", str(inputs), "--batch-id", "b1", "--json"
    )
    assert done.returncode == 1, done.stderr  # two malformed lines: reported, the rest ran
    report = json.loads(done.stdout)
    ok = [i for i in report["items"] if i["status"] == "ok"]
    assert [i["line"] for i in ok] == [1, 2]
    problems = [i["error"] for i in report["items"] if i["status"] == "malformed"]
    assert problems == [
        "line 3: expected a JSON object or string, got a number",
        "line 4: expected a JSON object or string, got an array",
    ]


def test_an_unpriced_batch_says_so(tmp_path: Path) -> None:
    flow = tmp_path / "unpriced_flow.py"
    flow.write_text(
        "import typedmesh as tm\n"
        "echo = tm.Agent('echo', input=str, output=str, model=tm.SchemaModel())\n"
    )
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('"a"\n"b"\n', encoding="utf-8")
    done = typedmesh(
        "batch", f"{flow}:echo", "--inputs", str(inputs), "--batch-id", "u1", "--no-progress"
    )
    assert done.returncode == 0, done.stderr
    assert "cost: unpriced" in done.stdout and "by model: schema unpriced" in done.stdout
    assert "$0.000000" not in done.stdout
