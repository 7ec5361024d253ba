"""Hard budgets, checked before each model call so a run cannot overspend."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BudgetExceeded
from ..models.base import Usage

__all__ = ["Budget"]


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits for one run; None means no limit.

    The check runs before a call, against what the run has spent so far: the
    call that would start past a limit is not made and ``BudgetExceeded`` ends
    the run (with its partial results).
    """

    max_tokens: int | None = None
    max_cost_usd: float | None = None
    max_model_calls: int | None = None

    def check(self, spent: Usage) -> None:
        """Raise ``BudgetExceeded`` if another model call would cross a limit."""
        if self.max_model_calls is not None and spent.model_calls >= self.max_model_calls:
            raise BudgetExceeded(
                f"model call budget of {self.max_model_calls} used up",
                limit="max_model_calls",
                value=self.max_model_calls,
                spent=spent.model_calls,
            )
        if self.max_tokens is not None and spent.total_tokens >= self.max_tokens:
            raise BudgetExceeded(
                f"token budget of {self.max_tokens} used up ({spent.total_tokens} spent)",
                limit="max_tokens",
                value=self.max_tokens,
                spent=spent.total_tokens,
            )
        if self.max_cost_usd is not None and spent.cost_usd >= self.max_cost_usd:
            raise BudgetExceeded(
                f"cost budget of ${self.max_cost_usd:.4f} used up (${spent.cost_usd:.4f} spent)",
                limit="max_cost_usd",
                value=self.max_cost_usd,
                spent=spent.cost_usd,
            )
