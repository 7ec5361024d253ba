"""Run a docs page's example as the page shows it: its first ``python`` block, whose
printed output must be the ``text`` block after "Its output" on the same page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def run_doc_example(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Execute ``docs/<page>``'s example as a script and compare what it printed."""
    doc = (DOCS / page).read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", doc, re.S)
    shown = re.search(r"Its output.*?```text\n(.*?)```", doc, re.S)
    assert code is not None, f"docs/{page} has no python block"
    assert shown is not None, f"docs/{page} shows no output after 'Its output'"
    exec(compile(code.group(1), f"docs/{page}", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == shown.group(1)
