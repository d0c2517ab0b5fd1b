"""TFTEnsemble: the members' outputs averaged, interpretation included."""

from __future__ import annotations

import pytest
import torch

from fusioncast.models.ensemble import TFTEnsemble
from tests.models.test_tft import RICH, make_batch, make_model


def members(n: int) -> list:
    out = []
    for i in range(n):
        m = make_model(RICH, dropout=0.0)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        out.append(m.eval())
    return out


def test_forecasts_and_interpretation_are_the_members_mean():
    nets = members(3)
    ens = TFTEnsemble(nets).eval()
    batch = make_batch(nets[0], 5)
    with torch.no_grad():
        got = ens(*batch.values(), return_interpretation=True)
        each = [m(*batch.values(), return_interpretation=True) for m in nets]
        assert torch.allclose(ens(*batch.values()), torch.stack([e[0] for e in each]).mean(0))
        assert not torch.allclose(each[0][0], each[1][0])  # the members differ
    assert len(got) == 5
    for k, part in enumerate(got):
        assert torch.allclose(part, torch.stack([e[k] for e in each]).mean(0))
    for weights in got[1:4]:  # static, encoder and decoder selection weights still sum to 1
        assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5)


def test_an_ensemble_needs_two_members():
    with pytest.raises(ValueError, match="at least 2"):
        TFTEnsemble(members(1))
