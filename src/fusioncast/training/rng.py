"""The global random number generators' states as plain data, so that a checkpoint can carry them.

Lightning checkpoints do not hold them, yet dropout draws from torch's generator: a run resumed from
a checkpoint continues exactly only if it draws what the uninterrupted run would have drawn. numpy's
state is kept as a tensor (not its ndarray tuple), so that torch.load(weights_only=True) reads it.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def collect() -> dict:
    """torch (CPU and every initialised CUDA device), numpy and Python generator states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    """Set the generators to a `collect()` state (CUDA's only where this process has the same devices)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _as_tuples(x):
    # random.setstate wants tuples; a checkpoint keeps them, but be lenient with lists
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
