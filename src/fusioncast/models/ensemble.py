"""A seed ensemble of TFTs: the members' quantile forecasts averaged, with the same plain-tensor interface.

Members share the architecture and the data; they differ in the seed of their initialisation and
batch order (`fusioncast-train ensemble.seeds=[42,7,13]`, fusioncast/postfit/seed_ensemble.py). Averaging the
members' forecasts quantile by quantile (Vincentisation: quantiles in order in every member stay in
order) is what seed ensembles of quantile forecasters usually do; it also exports as one ONNX graph, so the
bundle, the server and batch scoring need nothing new. Interpretation outputs (selection weights,
attention) are averaged likewise, so they still sum to 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusioncast.models.tft import TemporalFusionTransformer


class TFTEnsemble(nn.Module):
    def __init__(self, members: list[TemporalFusionTransformer]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, *inputs: Tensor, return_interpretation: bool = False):
        outputs = [m(*inputs, return_interpretation=return_interpretation) for m in self.members]
        if not return_interpretation:
            return torch.stack(outputs).mean(0)
        return tuple(torch.stack(parts).mean(0) for parts in zip(*outputs))
