"""Prices per million tokens, and the cost of a usage record.

Prices are list prices in USD as published by each provider; pass your own
table to ``cost_of`` (or ``register_price``) for negotiated rates or local models.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["PRICES", "Price", "cost_of", "price_of", "register_price"]


class Price(NamedTuple):
    """USD per one million input and output tokens."""

    input_per_mtok: float
    output_per_mtok: float


PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o3": Price(2.00, 8.00),
    "o4-mini": Price(1.10, 4.40),
    "claude-opus-4": Price(15.00, 75.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-3-5-haiku": Price(0.80, 4.00),
    "claude-haiku-4-5": Price(1.00, 5.00),
}


def register_price(model: str, input_per_mtok: float, output_per_mtok: float) -> None:
    """Add or override the price of a model name."""
    PRICES[model] = Price(input_per_mtok, output_per_mtok)
    _resolved.clear()


_resolved: dict[str, Price | None] = {}
"""Lookups of the default table by model name: one scan per name, not per call."""


def _lookup(model: str, table: dict[str, Price]) -> Price | None:
    name = model.partition(":")[2] if ":" in model else model
    if name in table:
        return table[name]
    # dated snapshots ("gpt-4o-mini-2024-07-18") price as their family: longest prefix wins
    best = max((k for k in table if name.startswith(k)), key=len, default=None)
    return table[best] if best else None


def price_of(model: str) -> Price | None:
    """The price of a model name (dated snapshots price as their family), or None."""
    if model not in _resolved:
        _resolved[model] = _lookup(model, PRICES)
    return _resolved[model]


def cost_of(
    model: str, input_tokens: int, output_tokens: int, table: dict[str, Price] | None = None
) -> float:
    """Dollar cost of one call; 0.0 for a model the table does not know."""
    if table is None:
        if model not in _resolved:
            _resolved[model] = _lookup(model, PRICES)
        price = _resolved[model]
    else:
        price = _lookup(model, table)
    if price is None:
        return 0.0
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6
