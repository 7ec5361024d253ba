"""RetryPolicy: how often and how patiently to retry a transient model failure."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import TransientModelError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry a model call that failed with one of ``retry_on``.

    ``max_attempts`` counts the first try; the wait before retry ``n`` (1-based)
    is ``backoff * multiplier ** (n - 1)``, capped at ``max_backoff`` seconds.
    When the failure says how long to wait (a ``TransientModelError`` whose
    ``retry_after`` came from the provider's ``Retry-After`` header), that wait
    is used instead, capped at ``max_retry_after`` seconds.
    Output-validation failures are not retried here: the agent re-asks the
    model with the errors instead (``output_retries``).
    """

    max_attempts: int = 3
    backoff: float = 0.5
    multiplier: float = 2.0
    max_backoff: float = 10.0
    retry_on: tuple[type[BaseException], ...] = (TransientModelError, TimeoutError)
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        from ..errors import ConfigurationError

        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1")
        if not self.max_retry_after >= 0:  # also refuses NaN
            raise ConfigurationError("RetryPolicy.max_retry_after must be at least 0")

    def delay(self, retry_number: int, error: BaseException | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry).

        ``error`` is the failure being retried: its ``retry_after`` (seconds the
        provider asked for), when present, wins over the backoff, up to
        ``max_retry_after``.
        """
        asked = getattr(error, "retry_after", None)
        if isinstance(asked, int | float) and math.isfinite(asked):
            return min(self.max_retry_after, max(0.0, float(asked)))
        return min(self.max_backoff, self.backoff * self.multiplier ** (retry_number - 1))

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether a failure of try ``attempt`` (1-based) earns another try."""
        return attempt < self.max_attempts and isinstance(error, self.retry_on)


NO_RETRY = RetryPolicy(max_attempts=1)
