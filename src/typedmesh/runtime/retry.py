"""RetryPolicy: how often and how patiently to retry a transient model failure."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TransientModelError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry a model call that failed with one of ``retry_on``.

    ``max_attempts`` counts the first try; the wait before retry ``n`` (1-based)
    is ``backoff * multiplier ** (n - 1)``, capped at ``max_backoff`` seconds.
    Output-validation failures are not retried here: the agent re-asks the
    model with the errors instead (``output_retries``).
    """

    max_attempts: int = 3
    backoff: float = 0.5
    multiplier: float = 2.0
    max_backoff: float = 10.0
    retry_on: tuple[type[BaseException], ...] = (TransientModelError, TimeoutError)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            from ..errors import ConfigurationError

            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1")

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        return min(self.max_backoff, self.backoff * self.multiplier ** (retry_number - 1))

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether a failure of try ``attempt`` (1-based) earns another try."""
        return attempt < self.max_attempts and isinstance(error, self.retry_on)


NO_RETRY = RetryPolicy(max_attempts=1)
