"""What the SDK-backed providers share: loopback detection and client lifetime."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

__all__ = ["LOOPBACK_KEY", "SDKModel", "is_loopback"]

LOOPBACK_KEY = "not-needed"
"""A stand-in API key for local servers, which ignore it though the SDKs insist on one."""

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def is_loopback(url: str | None) -> bool:
    """Whether ``url`` points at this machine."""
    return bool(url) and urlparse(url).hostname in _LOOPBACK_HOSTS


class SDKModel:
    """Base of models served through an official SDK client held in ``_client``."""

    _client: Any
    _owns_client: bool

    @property
    def base_url(self) -> str:
        """Where requests go, as the SDK resolved it (what the kill switch checks)."""
        return str(self._client.base_url)

    async def aclose(self) -> None:
        """Close the HTTP client if this model created it."""
        if self._owns_client:
            await self._client.close()
