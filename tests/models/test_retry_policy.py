"""RetryPolicy.delay: exponential backoff, or the wait the provider asked for (capped)."""

from __future__ import annotations

import pytest

from typedmesh import RetryPolicy
from typedmesh.errors import ConfigurationError, ModelError, TransientModelError


def test_backoff_without_an_error_keeps_the_old_signature() -> None:
    policy = RetryPolicy(backoff=0.5, multiplier=2.0, max_backoff=3.0)

    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]


def test_retry_after_wins_over_backoff() -> None:
    policy = RetryPolicy(backoff=5.0)

    assert policy.delay(1, TransientModelError("429", retry_after=0.2)) == 0.2
    assert policy.delay(3, TransientModelError("429", retry_after=0.0)) == 0.0


def test_retry_after_is_capped() -> None:
    assert RetryPolicy().delay(1, TransientModelError("429", retry_after=3600)) == 60.0
    policy = RetryPolicy(max_retry_after=2.5)
    assert policy.delay(1, TransientModelError("429", retry_after=10)) == 2.5


def test_errors_without_retry_after_use_the_backoff() -> None:
    policy = RetryPolicy(backoff=0.5)

    assert policy.delay(2, TransientModelError("503")) == 1.0
    assert policy.delay(2, TimeoutError()) == 1.0
    assert policy.delay(2, ModelError("400")) == 1.0


def test_max_retry_after_must_not_be_negative() -> None:
    with pytest.raises(ConfigurationError, match="max_retry_after"):
        RetryPolicy(max_retry_after=-1)


def test_positional_construction_still_works() -> None:
    policy = RetryPolicy(4, 0.1, 3.0, 1.0, (TransientModelError,))

    assert (policy.max_attempts, policy.max_retry_after) == (4, 60.0)
