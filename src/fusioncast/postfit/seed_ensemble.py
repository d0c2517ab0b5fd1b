"""Seed ensembles: `fusioncast-train ensemble.seeds=[42,7,13]` trains one TFT per seed on the same data
and config, one after the other, and averages their quantile forecasts (models/ensemble.py).

Each member is trained, checkpointed (checkpoints/seed_<seed>/) and, with `model.shrink_correction`,
shrunk on validation exactly as a single model would be; the ensemble is then assembled from the
members' best weights and saved as one Lightning checkpoint (checkpoints/ensemble.ckpt, with the
fitted preprocessing like any other), so evaluation, calibration, export, serving and batch scoring
treat it as one model. Calibration is fitted on the ensemble's validation forecasts.
"""

from __future__ import annotations

import json
from pathlib import Path

from fusioncast.models.module import RNG_KEY, TFTModule
from fusioncast.training import checkpoint

ENSEMBLE_FILE = "ensemble.ckpt"


def ensemble_seeds(seeds) -> list[int]:
    """The validated `ensemble.seeds`: [] for a single model (null or empty), else >= 2 distinct integers."""
    if seeds is None:
        return []
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"ensemble.seeds must be a list of integers, got {seeds!r}")
    seeds = list(seeds)
    if not seeds:
        return []
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"ensemble.seeds must be integers, got {seeds!r}")
    if len(seeds) < 2:
        raise ValueError(f"ensemble.seeds needs at least 2 seeds, got {seeds!r} (leave it null for one model)")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"ensemble.seeds repeats a seed: {seeds!r} (a repeated seed trains the same member twice)")
    return seeds


def assemble(members: list[TFTModule]) -> TFTModule:
    """One TFTModule whose network averages the members' (each member's weights copied in)."""
    hparams = dict(members[0].hparams)
    for i, m in enumerate(members[1:], 1):
        if _spelled(m.hparams) != _spelled(hparams):
            raise ValueError(f"ensemble member {i} was built with other hyperparameters than member 0")
    module = TFTModule(**{**hparams, "ensemble_size": len(members)})
    for net, m in zip(module.net.members, members):
        net.load_state_dict(m.net.state_dict())
    return module.to(members[0].device).eval()


def _spelled(hparams) -> str:
    # as text: tuples and lists (a config's and a checkpoint's spelling of the same list) compare alike
    return json.dumps(dict(hparams), default=repr, sort_keys=True)


def write_checkpoint(module: TFTModule, member_checkpoint: str, path: str | Path) -> str:
    """Save the assembled ensemble as a Lightning checkpoint at `path`, taking everything but the weights
    and hyperparameters (the datamodule's fitted state, versions) from a member's checkpoint. Optimiser and
    callback states are left out: an ensemble is not resumed."""
    ckpt = checkpoint.load(member_checkpoint)
    for key in ("optimizer_states", "lr_schedulers", "callbacks", "loops", RNG_KEY):
        ckpt.pop(key, None)
    ckpt["state_dict"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    ckpt["hyper_parameters"] = dict(module.hparams)
    checkpoint.save(ckpt, path)
    return str(path)
