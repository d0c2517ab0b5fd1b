"""Shrinking the TFT's correction of its linear skip towards the skip alone, chosen on validation.

A model with a linear skip (models/tft.py, `linear_skip`) forecasts skip + the TFT's correction. Where
the data hold little beyond what a linear map of the recent past explains (ETTh1's oil temperature),
a correction fitted on the training windows can cost more on new windows than it gains. After
training (`model.shrink_correction=true`), each quantile's correction is scaled by a factor a_q in
[0, 1] (`correction_scale`: the output layer's input-dependent part; its bias, the quantile offsets,
stays), chosen on the validation windows by that quantile's pinball loss (weighted as in training),
on a grid. Before the model's final sort (models/tft.py) forecasts are affine in a_q, so two passes
(a = 0 and a = 1) give every candidate. Factors per quantile can reorder the quantiles, which the sort
then puts back in order, and that couples the quantiles' losses: the search starts from each
quantile's own best factor (losses of the unsorted forecasts, separate per quantile) or all 0 or all
1, whichever gives the sorted forecasts the lowest loss, then moves one factor at a time while the
sorted loss falls (coordinate descent), so the chosen factors are judged on what is served. a = 1
leaves a quantile as trained; a = 0 leaves the skip plus a constant offset. The median can thus stay
with the skip while the interval quantiles keep the TFT's sense of when to widen. It is shrinkage of a stacked residual model, a choice made on
validation like early stopping: the test split never enters it (validation metrics reported
afterwards include the choice: one factor per quantile over all validation windows, a small
optimism; protocols that report validation turn the step off). The factors are written into the
best checkpoint, so evaluation, export and the torch backend of batch scoring all see them.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.evaluation.forecasts import predict_split
from fusioncast.models.module import TFTModule, quantile_loss
from fusioncast.training import checkpoint

GRID = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 21))


def pinball(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, quantiles: list[float],
            scale: np.ndarray) -> np.ndarray:
    """Each quantile's share of the training loss (models/module.py's quantile_loss, per quantile; the
    shares sum to it): pred (N, H, Q), target/mask (N, H), scale (N,) -> (Q,)."""
    p, t, m, s = (torch.from_numpy(np.asarray(a)) for a in (pred, target, mask, scale))
    return np.array([float(quantile_loss(p[..., k : k + 1], t, m, torch.tensor([q]), s))
                     for k, q in enumerate(quantiles)])


@contextmanager
def _unsorted(net):
    """The network's forecasts before its final sort over the quantile axis (affine in the factors)."""
    net.sort_quantiles = False
    try:
        yield
    finally:
        net.sort_quantiles = True


@torch.no_grad()
def choose_correction_scale(module: TFTModule, dm: TimeSeriesDataModule, split: str = "val",
                            grid: tuple[float, ...] = GRID, sweeps: int = 3) -> dict:
    """Set module.net.correction_scale to the grid factors with the lowest `split` loss of the sorted
    forecasts (module docstring); returns what was measured (the chosen factors, and the summed loss at
    them, at 1 and at 0)."""
    net = module.net
    if net.skip is None:
        raise ValueError("shrink_correction needs a linear skip (model.linear_skip > 0)")
    with _unsorted(net):
        net.correction_scale.fill_(1.0)
        full = predict_split(module, dm, split)
        net.correction_scale.fill_(0.0)
        base = predict_split(module, dm, split)
    scale = full["scale"]
    if module.hparams.get("loss_weighting", "series") == "raw":
        scale = np.full_like(scale, scale.mean())
    quantiles = list(module.hparams.quantiles)
    delta = full["pred"].astype(np.float64) - base["pred"]

    def loss(factors, ordered: bool = True) -> np.ndarray:  # (Q,): each quantile's share
        pred = base["pred"] + np.asarray(factors) * delta
        return pinball(np.sort(pred, axis=-1) if ordered else pred, full["target"], full["mask"], quantiles, scale)

    separate = np.stack([loss([a] * len(quantiles), ordered=False) for a in grid])  # (grid, Q)
    # per quantile, the largest factor among equal losses: shrink only where validation says so
    own = [float(grid[max(range(len(grid)), key=lambda j: (-separate[j, k], grid[j]))]) for k in range(len(quantiles))]
    at_1, at_0 = loss([1.0] * len(quantiles)).sum(), loss([0.0] * len(quantiles)).sum()
    factors, best = min(((own, loss(own).sum()), ([1.0] * len(quantiles), at_1), ([0.0] * len(quantiles), at_0)),
                        key=lambda c: c[1])
    factors = list(factors)
    for _ in range(sweeps):
        moved = False
        for k in range(len(quantiles)):
            for a in grid:
                trial = [*factors[:k], float(a), *factors[k + 1 :]]
                value = loss(trial).sum()
                if value < best - 1e-12 or (value <= best + 1e-12 and a > factors[k]):
                    moved |= trial != factors
                    factors, best = trial, min(best, value)
        if not moved:
            break
    net.correction_scale.copy_(torch.tensor(factors))
    return {"factors": dict(zip((f"{q:g}" for q in quantiles), factors)), "split": split,
            "loss": float(best), "loss_at_1": float(at_1), "loss_at_0": float(at_0), "grid": list(grid)}


def write_correction_scale(ckpt_path: str, factors: list[float]) -> None:
    """Store the chosen factors in a Lightning checkpoint's state dict (the file is rewritten)."""
    ckpt = checkpoint.load(ckpt_path)
    ckpt["state_dict"]["net.correction_scale"] = torch.tensor([float(f) for f in factors])
    checkpoint.save(ckpt, ckpt_path)
