"""CLI friction: next steps after a run, run-id prefixes, names that wrap, offline/unpriced."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

import typedmesh as tm
from typedmesh.cli import app

FLOW = textwrap.dedent("""
    import json
    from pydantic import BaseModel
    import typedmesh as tm

    class Q(BaseModel):
        text: str

    class A(BaseModel):
        answer: str

    def answer(r):
        return tm.ModelResponse(
            content=json.dumps({"answer": "ok"}),
            usage=tm.Usage(input_tokens=100, output_tokens=20),
        )

    flow = tm.Agent("a_rather_long_agent_name_for_the_table", version="1.0.0", input=Q,
        output=A, model=tm.ScriptedModel(answer, name="gpt-4o"))
    unpriced = tm.Agent("local", version="1.0.0", input=Q, output=A,
        model=tm.ScriptedModel(answer, name="my-local-model"))
    broken = tm.Agent("broken", input=Q, output=A, output_retries=0,
        model=tm.ScriptedModel(lambda r: "no json here", name="gpt-4o"))
""")

runner = CliRunner()


@pytest.fixture
def flow_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    path = tmp_path / "friction_flow.py"
    path.write_text(FLOW)
    return path


def _run(journal: Path, run_id: str, attr: str = "flow") -> str:
    result = runner.invoke(
        app,
        [
            "run",
            f"friction_flow.py:{attr}",
            "-i",
            '{"text": "hi"}',
            "--journal",
            str(journal),
            "--run-id",
            run_id,
        ],
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_run_says_what_to_do_next(flow_file: Path, tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    out = _run(journal, "abc123")
    assert f"typedmesh trace abc123 --journal {journal}" in out
    assert "typedmesh cost abc123" in out
    assert "typedmesh replay abc123" in out


def test_names_are_not_cut_at_80_columns(flow_file: Path, tmp_path: Path) -> None:
    out = _run(tmp_path / "j.db", "abc123")
    assert "…" not in out
    flat = "".join(line.strip(" │┃|") for line in out.splitlines())
    assert "a_rather_long_agent_name" in flat


def test_unique_prefix_resolves_and_ambiguous_lists(flow_file: Path, tmp_path: Path) -> None:
    journal = str(tmp_path / "j.db")
    _run(Path(journal), "abc123")
    _run(Path(journal), "abd456")
    for command in ("trace", "verify", "cost", "waiting"):
        result = runner.invoke(app, [command, "abc", "--journal", journal])
        assert result.exit_code == 0, (command, result.output)
        assert "abc123" in result.output
    ambiguous = runner.invoke(app, ["trace", "ab", "--journal", journal])
    assert ambiguous.exit_code == 2
    assert "ambiguous" in ambiguous.output
    assert "abc123" in ambiguous.output and "abd456" in ambiguous.output
    unknown = runner.invoke(app, ["trace", "zzz", "--journal", journal])
    assert unknown.exit_code == 2
    assert "no run 'zzz'" in unknown.output
    replay = runner.invoke(app, ["replay", "abd", "--journal", journal])
    assert replay.exit_code == 0, replay.output


def test_offline_and_unpriced_models_are_labelled(flow_file: Path, tmp_path: Path) -> None:
    journal = str(tmp_path / "j.db")
    out = _run(Path(journal), "offline1")
    flat = " ".join(out.split())
    assert "offline, priced as gpt-4o" in flat
    assert "cost: $0.000450 (gpt-4o: offline, priced as gpt-4o)" in flat
    trace = runner.invoke(app, ["trace", "offline1", "--journal", journal])
    assert "offline, priced as gpt-4o" in " ".join(trace.output.split())
    out = _run(Path(journal), "local1", attr="unpriced")
    flat = " ".join(out.split())
    assert "cost: unpriced" in flat
    assert "$0.000000" not in flat and "0.000000" not in flat
    trace = runner.invoke(app, ["trace", "local1", "--journal", journal])
    assert "unpriced" in trace.output and "$0.000000" not in trace.output


def test_a_run_without_a_journal_is_labelled_the_same(flow_file: Path) -> None:
    for attr, expected in (
        ("flow", "cost: $0.000450 (gpt-4o: offline, priced as gpt-4o)"),
        ("unpriced", "cost: unpriced"),
    ):
        result = runner.invoke(
            app, ["run", f"friction_flow.py:{attr}", "-i", '{"text": "hi"}', "--no-journal"]
        )
        assert result.exit_code == 0, result.output
        flat = " ".join(result.output.split())
        assert expected in flat and "0.000000" not in flat
        assert "next:" not in flat and "journal:" not in flat


def test_the_partial_trace_of_a_failed_run_labels_offline_models(flow_file: Path) -> None:
    result = runner.invoke(
        app, ["run", "friction_flow.py:broken", "-i", '{"text": "hi"}', "--no-journal"]
    )
    assert result.exit_code == 1, result.output
    assert "offline, priced as gpt-4o" in " ".join(result.output.split())


def test_retries_and_escalations_read_as_sentences_in_the_trace() -> None:
    import io

    from rich.console import Console

    from typedmesh.render import trace_tree

    class Q(BaseModel):
        text: str

    class A(BaseModel):
        answer: str

    flaky = tm.ScriptedModel(
        [
            tm.TransientModelError("the server is busy", status=503, error_type="server_error"),
            "not json",
            {"answer": "ok"},
        ],
        name="gpt-4o-mini",
    )
    better = tm.ScriptedModel([{"answer": "ok"}], name="gpt-4o")
    agent = tm.Agent(
        "a", input=Q, output=A, model=tm.Cascade(flaky, better), retry=tm.RetryPolicy(backoff=0.0)
    )
    result = tm.run(agent, {"text": "hi"})
    console = Console(file=io.StringIO(), width=200)
    console.print(trace_tree(result.trace))
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "retry 1 of model#0 after server_error (HTTP 503): " in shown
    assert "escalated gpt-4o-mini -> gpt-4o after a validation failure" in shown
    assert "{'key'" not in shown  # no raw payload dicts
