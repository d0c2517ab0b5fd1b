"""The TFT's linear skip fitted in closed form: NLinear's least-squares solution on the training windows.

With `model.linear_skip_fit=lstsq` the skip (models/tft.py, `linear_skip`) is solved once at the start
of training by ridge regression of the normalised decoder targets on the last `linear_skip` encoder
targets (both relative to the last observed one), and then kept fixed: the TFT learns only what a
linear map of the recent past misses. SGD would need many epochs to reach this solution, and Adam's
steps keep jittering around it.
"""

from __future__ import annotations

import torch

from fusioncast.data.windows import BatchLoader
from fusioncast.models.tft import MIN_TARGET_SCALE, TemporalFusionTransformer


@torch.no_grad()
def fit_linear_skip(net: TemporalFusionTransformer, loader: BatchLoader, ridge: float = 1e-4) -> int:
    """Set net.skip to the ridge solution over the loader's windows whose horizon is fully observed;
    returns how many windows it used (0: the skip is left as it was)."""
    k, H = net.linear_skip, net.max_prediction_length
    gram = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    cross = torch.zeros(k + 1, H, dtype=torch.float64)
    n = 0
    for b in loader:
        center = b.target_scale[:, 0:1]
        scale = b.target_scale[:, 1:2].clamp_min(MIN_TARGET_SCALE)
        # the inputs the model's skip sees (TemporalFusionTransformer._linear_skip)
        target = torch.where(b.encoder_mask, (b.encoder_real[..., 0] - center) / scale, 0.0)
        last_step = torch.where(b.encoder_mask, net.positions, 0).amax(dim=-1, keepdim=True)
        last = target.gather(1, last_step)
        recent = torch.where(b.encoder_mask[:, -k:], target[:, -k:] - last, 0.0)
        full = b.target_mask.all(dim=1) & b.encoder_mask.any(dim=1)
        a = torch.cat([recent, torch.ones_like(last)], dim=1)[full].double().cpu()
        y = ((b.target - center) / scale - last)[full].double().cpu()
        gram += a.T @ a
        cross += a.T @ y
        n += int(full.sum())
    if n == 0:
        return 0
    w = torch.linalg.solve(gram + ridge * n * torch.eye(k + 1, dtype=torch.float64), cross)  # (k + 1, H)
    net.skip.weight.copy_(w[:k].T.to(net.skip.weight))
    net.skip.bias.copy_(w[k].to(net.skip.bias))
    return n
