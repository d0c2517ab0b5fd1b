"""Shrinking the TFT's correction of its linear skip towards the skip alone, chosen on validation.

A model with a linear skip (models/tft.py, `linear_skip`) forecasts skip + the TFT's correction. Where
the data hold little beyond what a linear map of the recent past explains (ETTh1's oil temperature),
a correction fitted on the training windows can cost more on new windows than it gains. After
training (`model.shrink_correction=true`), each quantile's correction is scaled by a factor a_q in
[0, 1] (`correction_scale`: the output layer's input-dependent part; its bias, the quantile offsets,
stays), chosen on the validation windows by that quantile's pinball loss (weighted as in training),
on a grid. The quantiles' losses are separate and forecasts are affine in a_q, so two passes
(a = 0 and a = 1) give every candidate. a = 1 leaves a quantile as trained; a = 0 leaves the skip
plus a constant offset. The median can thus stay with the skip while the interval quantiles keep
the TFT's sense of when to widen. It is shrinkage of a stacked residual model, a choice made on
validation like early stopping: the test split never enters it (validation metrics reported
afterwards include the choice: one factor per quantile over all validation windows, a small
optimism; protocols that report validation turn the step off). The factors are written into the
best checkpoint, so evaluation, export and the torch backend of batch scoring all see them.
"""

from __future__ import annotations

import numpy as np
import torch

from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.evaluate import predict_split
from fusioncast.models.module import TFTModule, quantile_loss

GRID = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 21))


def pinball(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, quantiles: list[float],
            scale: np.ndarray) -> np.ndarray:
    """Each quantile's share of the training loss (models/module.py's quantile_loss, per quantile; the
    shares sum to it): pred (N, H, Q), target/mask (N, H), scale (N,) -> (Q,)."""
    p, t, m, s = (torch.from_numpy(np.asarray(a)) for a in (pred, target, mask, scale))
    return np.array([float(quantile_loss(p[..., k : k + 1], t, m, torch.tensor([q]), s))
                     for k, q in enumerate(quantiles)])


@torch.no_grad()
def choose_correction_scale(module: TFTModule, dm: TimeSeriesDataModule, split: str = "val",
                            grid: tuple[float, ...] = GRID) -> dict:
    """Set module.net.correction_scale to each quantile's grid value with the lowest `split` loss; returns
    what was measured (the chosen factors, and the summed loss at them, at 1 and at 0)."""
    net = module.net
    if net.skip is None:
        raise ValueError("shrink_correction needs a linear skip (model.linear_skip > 0)")
    net.correction_scale.fill_(1.0)
    full = predict_split(module, dm, split)
    net.correction_scale.fill_(0.0)
    base = predict_split(module, dm, split)
    scale = full["scale"]
    if module.hparams.get("loss_weighting", "series") == "raw":
        scale = np.full_like(scale, scale.mean())
    quantiles = list(module.hparams.quantiles)
    delta = full["pred"].astype(np.float64) - base["pred"]
    losses = np.stack([pinball(base["pred"] + a * delta, full["target"], full["mask"], quantiles, scale)
                       for a in grid])  # (grid, Q)
    # per quantile, the largest factor among equal losses: shrink only where validation says so
    chosen = [max(range(len(grid)), key=lambda j: (-losses[j, k], grid[j])) for k in range(len(quantiles))]
    factors = [float(grid[j]) for j in chosen]
    net.correction_scale.copy_(torch.tensor(factors))
    return {"factors": dict(zip((f"{q:g}" for q in quantiles), factors)), "split": split,
            "loss": float(sum(losses[j, k] for k, j in enumerate(chosen))), "loss_at_1": float(losses[-1].sum()),
            "loss_at_0": float(losses[0].sum()), "grid": list(grid)}


def write_correction_scale(ckpt_path: str, factors: list[float]) -> None:
    """Store the chosen factors in a Lightning checkpoint's state dict (the file is rewritten)."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    ckpt["state_dict"]["net.correction_scale"] = torch.tensor([float(f) for f in factors])
    torch.save(ckpt, ckpt_path)
