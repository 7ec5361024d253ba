"""``typedmesh run --follow``: events and token deltas on stderr, as they happen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

FLOW = textwrap.dedent("""
    import asyncio
    import json
    import os
    from pydantic import BaseModel
    import typedmesh as tm
    from typedmesh.models.base import ModelResponse, Usage
    from typedmesh.models.streaming import emit_delta

    class Question(BaseModel):
        text: str

    class Answer(BaseModel):
        answer: str

    class Talker:
        '''Streams its answer; with GO_FILE set, waits for that file after the first piece.'''
        name = "talker"
        provider = "offline"

        async def generate(self, request):
            text = json.dumps({"answer": "streamed and whole"})
            for n, i in enumerate(range(0, len(text), 6)):
                emit_delta(text[i : i + 6])
                go = os.environ.get("GO_FILE")
                while n == 0 and go and not os.path.exists(go):
                    await asyncio.sleep(0.02)
            return ModelResponse(content=text, usage=Usage(input_tokens=3, output_tokens=5),
                                 model="talker")

    answerer = tm.Agent("answerer", input=Question, output=Answer, model=Talker())

    @tm.step
    def shout(a: Answer) -> Answer:
        return Answer(answer=a.answer.upper())

    @tm.step
    def explode(a: Answer) -> Answer:
        raise RuntimeError("exploded on purpose")

    flow = tm.sequential(answerer, shout, name="qa")
    failing = tm.sequential(answerer, explode, name="bad")
""")

ANSWER = json.dumps({"answer": "streamed and whole"})


@pytest.fixture
def flow_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the CLI journals to ./.typedmesh/runs.db
    path = tmp_path / "follow_flow.py"
    path.write_text(FLOW)
    return path


def env(**extra: str) -> dict[str, str]:
    return {
        "TYPEDMESH_ALLOW_NETWORK": "0",
        "PATH": "/usr/bin:/bin",
        "COLUMNS": "200",
        **extra,
    }


def typedmesh(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "typedmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(**extra),
    )


def test_follow_shows_deltas_while_the_call_is_still_running(
    flow_file: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    command = [sys.executable, "-m", "typedmesh.cli", "run", f"{flow_file}:flow"]
    seen = bytearray()
    with subprocess.Popen(
        [*command, "--input", '{"text": "q"}', "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(GO_FILE=str(go)),
    ) as process:
        assert process.stderr is not None and process.stdout is not None
        stderr = process.stderr.fileno()

        def read() -> None:
            while chunk := os.read(stderr, 4096):
                seen.extend(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 30
            while ANSWER[:6].encode() not in seen:  # the first piece, written as it came
                assert process.poll() is None, seen.decode()
                assert time.monotonic() < deadline, f"no delta on stderr: {seen.decode()!r}"
                time.sleep(0.02)
            shown = seen.decode()
            assert "run.started" in shown and "model.request" in shown
            assert "model.response" not in shown  # the call has not ended: it waits for us
            go.touch()
            out = process.stdout.read().decode()
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
            reader.join(timeout=5)
    shown = seen.decode()
    assert f"answerer > {ANSWER}\n" in shown  # the pieces add up to the whole answer
    order = ["run.started", "step.started", "model.request", "model.response", "run.finished"]
    assert [shown.index(t) for t in order] == sorted(shown.index(t) for t in order)
    assert "qa/answerer" in shown and "talker 3+5 tokens" in shown
    assert '"answer": "STREAMED AND WHOLE"' in out and "run.started" not in out


def test_follow_with_json_writes_json_lines_and_keeps_stdout_one_document(
    flow_file: Path,
) -> None:
    done = typedmesh("run", f"{flow_file}:flow", "--input", '{"text": "q"}', "--follow", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["output"] == {"answer": "STREAMED AND WHOLE"}
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    events = [line for line in lines if line["kind"] == "event"]
    deltas = [line for line in lines if line["kind"] == "delta"]
    assert events[0]["type"] == "run.started" and events[-1]["type"] == "run.finished"
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert "".join(d["text"] for d in deltas) == ANSWER
    assert {d["key"] for d in deltas} == {"qa/answerer/model#0"}

    traced = typedmesh("trace", document["run_id"], "--json")
    assert traced.returncode == 0, traced.stderr


def test_follow_shows_a_failure_and_exits_as_run_does(flow_file: Path) -> None:
    done = typedmesh("run", f"{flow_file}:failing", "--input", '{"text": "q"}', "--follow")
    assert done.returncode == 1
    assert "run.failed" in done.stderr and "exploded on purpose" in done.stderr
    assert "error" in done.stderr and "StepFailed" in done.stderr
    followed = done.stderr.index("run.failed")
    assert done.stderr.index(f"answerer > {ANSWER}") < followed


def test_without_follow_nothing_is_streamed_to_stderr(flow_file: Path) -> None:
    done = typedmesh("run", f"{flow_file}:flow", "--input", '{"text": "q"}')
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and "run.started" not in done.stdout


# -- a reader that is slow, or goes away, never holds or breaks the run ----------------

CHATTY = textwrap.dedent("""
    import typedmesh as tm

    WORDS = " ".join(f"word{n}" for n in range(40_000))  # ~350 KB of streamed text

    talker = tm.Agent("talker", input=str, output=str,
                      model=tm.ScriptedModel([WORDS], name="gpt-4o-mini"))
""")


def chatty_run(tmp_path: Path, run_id: str, **streams: object) -> subprocess.Popen[bytes]:
    (tmp_path / "chatty.py").write_text(CHATTY)
    env = {**os.environ, "TYPEDMESH_ALLOW_NETWORK": "0"}
    command = [
        sys.executable,
        "-m",
        "typedmesh.cli",
        "run",
        f"{tmp_path}/chatty.py:talker",
        "-i",
        "go",
        "--follow",
        "--run-id",
        run_id,
        "--journal",
        str(tmp_path / "f.db"),
    ]
    return subprocess.Popen(command, env=env, cwd=tmp_path, **streams)  # type: ignore[call-overload]


def status_of(tmp_path: Path, run_id: str) -> str:
    import typedmesh as tm

    with tm.SQLiteJournal(tmp_path / "f.db") as store:
        return {r.run_id: r.status for r in store.runs()}[run_id]


def test_a_reader_that_never_reads_does_not_hold_the_run(tmp_path: Path) -> None:
    """stderr is a pipe nobody reads: it fills after 64 KB. The run still finishes."""
    child = chatty_run(tmp_path, "slow", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = time.monotonic()
    try:
        deadline = started + 60
        while status_of_or_none(tmp_path, "slow") != "finished":
            assert time.monotonic() < deadline, "the run was held by its unread --follow output"
            time.sleep(0.05)
    finally:
        child.kill()
        child.communicate(timeout=30)


def status_of_or_none(tmp_path: Path, run_id: str) -> str | None:
    try:
        return status_of(tmp_path, run_id)
    except Exception:  # not created yet
        return None


def test_a_reader_that_goes_away_does_not_break_the_run(tmp_path: Path) -> None:
    """`typedmesh run --follow 2>&1 | head -2`: the pipe closes after two lines."""
    read, write = os.pipe()
    child = chatty_run(tmp_path, "gone", stdout=write, stderr=write)
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        first = reader.readline() + reader.readline()
    assert b"run.started" in first  # then the reader is gone: the pipe is closed
    child.wait(timeout=60)
    assert status_of(tmp_path, "gone") == "finished"
