"""Test-wide guards: no test may reach a non-loopback host."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import typedmesh.models


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(typedmesh.models, "ALLOW_NETWORK", False)
    for var in (
        "TYPEDMESH_MODEL",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    yield


# Session-scoped PostgreSQL and Redis servers (postgres_url, redis_url, pg_schema, ...):
# started on first use, stopped at the end; see tests/servers_plugin.py.
pytest_plugins = ["servers_plugin"]
