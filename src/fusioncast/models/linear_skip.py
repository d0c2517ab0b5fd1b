"""The TFT's linear skip fitted in closed form: NLinear's least-squares solution on the training windows.

With `model.linear_skip_fit=lstsq` the skip (models/tft.py, `linear_skip`) is solved once at the start
of training by ridge regression of the normalised decoder targets on the last `linear_skip` encoder
targets (both relative to the last observed one), and then kept fixed: the TFT learns only what a
linear map of the recent past misses. SGD would need many epochs to reach this solution, and Adam's
steps keep jittering around it. The output layer starts at zero weights and, as biases, the quantiles
of the linear fit's residuals: training starts from a quantile NLinear, not from noise added to it.
"""

from __future__ import annotations

import torch

from fusioncast.data.windows import BatchLoader
from fusioncast.models.tft import MIN_TARGET_SCALE, TemporalFusionTransformer


def _design(net: TemporalFusionTransformer, loader: BatchLoader):
    """Per batch: the skip's inputs [recent - last, 1] and targets (normalised, minus last) of the windows
    whose horizon is fully observed, as float64 on the CPU."""
    for b in loader:
        center = b.target_scale[:, 0:1]
        scale = b.target_scale[:, 1:2].clamp_min(MIN_TARGET_SCALE)
        target = torch.where(b.encoder_mask, (b.encoder_real[..., 0] - center) / scale, 0.0)
        last, recent = net.skip_inputs(target, b.encoder_mask)
        full = b.target_mask.all(dim=1) & b.encoder_mask.any(dim=1)
        yield (torch.cat([recent, torch.ones_like(last)], dim=1)[full].double().cpu(),
               ((b.target - center) / scale - last)[full].double().cpu())


@torch.no_grad()
def fit_linear_skip(net: TemporalFusionTransformer, loader: BatchLoader, ridge: float = 1e-4,
                    start_output: bool = True) -> int:
    """Set net.skip to the ridge solution over the loader's windows whose horizon is fully observed (and,
    with `start_output`, the output layer to the residual quantiles); returns how many windows it used
    (0: nothing is changed)."""
    k, H = net.linear_skip, net.max_prediction_length
    gram = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    cross = torch.zeros(k + 1, H, dtype=torch.float64)
    n = 0
    for a, y in _design(net, loader):
        gram += a.T @ a
        cross += a.T @ y
        n += len(a)
    if n == 0:
        return 0
    w = torch.linalg.solve(gram + ridge * n * torch.eye(k + 1, dtype=torch.float64), cross)  # (k + 1, H)
    net.skip.weight.copy_(w[:k].T.to(net.skip.weight))
    net.skip.bias.copy_(w[k].to(net.skip.bias))
    if start_output:
        residuals = torch.cat([(y - a @ w).flatten() for a, y in _design(net, loader)])
        if len(residuals) > 1_000_000:  # a quantile needs no more
            residuals = residuals[torch.randperm(len(residuals), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        q = torch.tensor(net.quantiles, dtype=torch.float64)
        net.output.weight.zero_()
        net.output.bias.copy_(torch.quantile(residuals, q).to(net.output.bias))
    return n
