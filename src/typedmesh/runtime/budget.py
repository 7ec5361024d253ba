"""Hard budgets that hold under concurrency: reserve before a call, settle after.

The check runs before a call is sent, against what the run has spent *plus
what calls already in flight have reserved*, so ten concurrent branches
under ``max_model_calls=3`` make three calls, not ten. A model with no known
price under a cost budget is refused before any request: a budget that
cannot be enforced is not silently $0.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BudgetExceeded, ConfigurationError, UnpricedModel
from ..models.base import Usage
from ..models.pricing import cost_of, price_of

__all__ = ["Budget", "BudgetTracker", "Reservation"]


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits for one run; None means no limit.

    A call that would start past a limit is not made and ``BudgetExceeded``
    ends the run (with its partial results). ``max_plan_steps`` caps the plan
    an orchestrator will execute (a longer plan is sent back to the planner).
    """

    max_tokens: int | None = None
    max_cost_usd: float | None = None
    max_model_calls: int | None = None
    max_plan_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_cost_usd", "max_model_calls", "max_plan_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigurationError(f"Budget.{name} must be >= 0, got {value}")

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "max_tokens": self.max_tokens,
            "max_cost_usd": self.max_cost_usd,
            "max_model_calls": self.max_model_calls,
            "max_plan_steps": self.max_plan_steps,
        }


@dataclass(slots=True)
class Reservation:
    """What one in-flight call holds against the budget until it settles."""

    calls: int
    tokens: int
    cost_usd: float


class BudgetTracker:
    """A run's budget and what its in-flight calls hold against it."""

    __slots__ = ("budget", "calls", "cost_usd", "spent", "tokens")

    def __init__(self, budget: Budget, spent: Usage) -> None:
        self.budget = budget
        self.spent = spent
        """The run's usage, kept current by the trace reducer."""
        self.calls = 0
        self.tokens = 0
        self.cost_usd = 0.0

    def reserve(self, model: str, request_chars: int, max_tokens: int | None) -> Reservation:
        """Hold an estimate of one call, or raise ``BudgetExceeded`` and hold nothing."""
        budget, spent = self.budget, self.spent
        if budget.max_model_calls is not None:
            used = spent.model_calls + self.calls
            if used + 1 > budget.max_model_calls:
                raise BudgetExceeded(
                    f"model call budget of {budget.max_model_calls} used up "
                    f"({spent.model_calls} made, {self.calls} in flight)",
                    limit="max_model_calls",
                    value=budget.max_model_calls,
                    spent=spent.model_calls,
                )
        estimate_in = request_chars // 4  # about four characters a token
        estimate_out = max_tokens or 0
        if budget.max_tokens is not None:
            used = spent.total_tokens + self.tokens
            if used >= budget.max_tokens or used + estimate_in > budget.max_tokens:
                raise BudgetExceeded(
                    f"token budget of {budget.max_tokens} used up ({spent.total_tokens} spent, "
                    f"{self.tokens} held by calls in flight, ~{estimate_in} for this request)",
                    limit="max_tokens",
                    value=budget.max_tokens,
                    spent=spent.total_tokens,
                )
        cost = 0.0
        if budget.max_cost_usd is not None:
            if model and price_of(model) is None:
                raise UnpricedModel(
                    f"model {model!r} has no known price, so the cost budget of "
                    f"${budget.max_cost_usd:.4f} cannot be enforced: register its price "
                    "(typedmesh.models.pricing.register_price) or drop max_cost_usd",
                    limit="max_cost_usd",
                    value=budget.max_cost_usd,
                    spent=spent.cost_usd,
                )
            cost = cost_of(model, estimate_in, estimate_out) if model else 0.0
            used_cost = spent.cost_usd + self.cost_usd
            if used_cost >= budget.max_cost_usd or used_cost + cost > budget.max_cost_usd:
                raise BudgetExceeded(
                    f"cost budget of ${budget.max_cost_usd:.4f} used up "
                    f"(${spent.cost_usd:.4f} spent, ${self.cost_usd:.4f} held in flight)",
                    limit="max_cost_usd",
                    value=budget.max_cost_usd,
                    spent=spent.cost_usd,
                )
        held = Reservation(1, estimate_in + estimate_out, cost)
        self.calls += held.calls
        self.tokens += held.tokens
        self.cost_usd += held.cost_usd
        return held

    def release(self, held: Reservation) -> None:
        """The call settled (its real usage is now in ``spent``) or never went out."""
        self.calls -= held.calls
        self.tokens -= held.tokens
        self.cost_usd -= held.cost_usd
