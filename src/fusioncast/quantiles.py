"""Quantile levels: which of a model's levels stands for a requested one (the median: the point forecast)."""

from __future__ import annotations

from collections.abc import Sequence


def nearest_index(quantiles: Sequence[float], level: float) -> int:
    """Index of the level nearest `level`, whatever levels a model was trained with."""
    return min(range(len(quantiles)), key=lambda i: abs(float(quantiles[i]) - level))


def median_index(quantiles: Sequence[float]) -> int:
    """Index of the point forecast: the level nearest 0.5."""
    return nearest_index(quantiles, 0.5)
