"""Provider tests: no API key or base URL leaks in from the environment, nothing
leaves loopback, and a keep-alive fake server per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from fake_provider_server import FakeProviderServer, forbid_non_loopback

from typedmesh.models import set_default_timeout
from typedmesh.models.anthropic import AnthropicModel
from typedmesh.models.openai import OpenAIModel

ENV_VARS = [
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_ADMIN_KEY",
    "OPENAI_CUSTOM_HEADERS",
    "OPENAI_WEBHOOK_SECRET",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_CUSTOM_HEADERS",
    "ANTHROPIC_PROFILE",
    "ANTHROPIC_CONFIG_DIR",
    "ANTHROPIC_IDENTITY_TOKEN",
    "ANTHROPIC_IDENTITY_TOKEN_FILE",
    "ANTHROPIC_FEDERATION_RULE_ID",
    "ANTHROPIC_ORGANIZATION_ID",
    "TYPEDMESH_MODEL_TIMEOUT",
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    attempts = forbid_non_loopback(monkeypatch)
    yield
    set_default_timeout(None)  # a test that set the process-wide timeout leaves none behind
    assert attempts == [], f"a test tried to reach {attempts}"


@pytest.fixture
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as fake:
        yield fake


@pytest.fixture(params=["openai", "anthropic"])
async def provider(
    request: pytest.FixtureRequest, server: FakeProviderServer
) -> AsyncIterator[tuple[str, OpenAIModel | AnthropicModel]]:
    """``(name, model)`` for each provider, its SDK pointed at the fake server; closed after."""
    model: OpenAIModel | AnthropicModel
    if request.param == "openai":
        model = OpenAIModel("gpt-4o-mini", base_url=server.openai_base_url)
    else:
        model = AnthropicModel("claude-haiku-4-5", base_url=server.anthropic_base_url)
    yield request.param, model
    await model.aclose()
