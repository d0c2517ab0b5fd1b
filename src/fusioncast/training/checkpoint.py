"""Checkpoints as plain data: every checkpoint fusioncast reads goes through `load`, which never runs code.

A Lightning checkpoint is a pickle, and unpickling an arbitrary file can call anything it names (a
`__reduce__` payload). `load` reads with `torch.load(weights_only=True)`: only tensors, numbers,
strings and containers come back, and a file that names any other global is refused with
CheckpointError before any of it runs. fusioncast writes nothing else into a checkpoint
(hyperparameters are plain dicts, the optimiser and scheduler as their config), so no global needs
allow-listing. The trainer reads the checkpoint it resumes from through `load` too (SafeCheckpointIO).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.models.module import TFTModule

DATA_STATE = TimeSeriesDataModule.__qualname__  # where Lightning puts the datamodule's state_dict()


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or is not a fusioncast checkpoint."""


def load(path: str | Path, map_location: Any = "cpu") -> dict:
    """The checkpoint at `path` as plain data (tensors, numbers, strings, containers), or CheckpointError."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"it names {named.group(1)}" if named else str(e).splitlines()[-1].strip()
        raise CheckpointError(
            f"{path}: refused to load: a checkpoint may hold only tensors and plain data, and {what}. "
            "Checkpoints are read with torch.load(weights_only=True), so nothing in the file ran. "
            "A fusioncast checkpoint written before checkpoints became plain data (its optimizer a Hydra "
            "object) is refused the same way: retrain it with this version (docs/training.md)."
        ) from None
    except (RuntimeError, EOFError) as e:  # torch's zip reader on a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a torch file): {e}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def save(ckpt: dict, path: str | Path) -> None:
    """Write a checkpoint atomically (a temporary file renamed over `path`): a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def data_state(ckpt: dict, path: str | Path) -> dict:
    """The datamodule's state (data config, fitted preprocessing) of a loaded fusioncast checkpoint."""
    state = ckpt.get(DATA_STATE)
    if not isinstance(state, dict) or "hparams" not in state:
        raise CheckpointError(f"{path} is not a fusioncast checkpoint (no {DATA_STATE} state)")
    return state


def model_from(ckpt: dict, path: str | Path, device: str | torch.device = "cpu") -> TFTModule:
    """The TFTModule of a loaded checkpoint: built from its hyperparameters, its weights loaded."""
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or "data_kwargs" not in hparams:
        raise CheckpointError(f"{path} is not a fusioncast checkpoint (no model hyperparameters)")
    try:
        module = TFTModule(**hparams)
    except TypeError as e:  # a key this version does not know
        raise CheckpointError(f"{path}: its model hyperparameters do not fit this version of fusioncast: {e}") from None
    module.load_state_dict(ckpt["state_dict"])
    return module.to(device)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[TFTModule, dict]:
    """(module, checkpoint) from a checkpoint file."""
    ckpt = load(path)
    return model_from(ckpt, path, device), ckpt


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, reading through `load` (the trainer's resume, `trainer.fit(ckpt_path=...)`)."""

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load(path, map_location=map_location or "cpu")


def load_with_data(ckpt_path: str, data_overrides: dict | None = None, device: str | None = None):
    """(module, datamodule) from a checkpoint: the data config and fitted preprocessing travel in it.

    `data_overrides` replace keys of the stored data config (e.g. `path` to point at another copy).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load(ckpt_path)
    state = data_state(ckpt, ckpt_path)
    hparams = {**state["hparams"], **{k: v for k, v in (data_overrides or {}).items() if v is not None}}
    dm = TimeSeriesDataModule(**hparams)
    dm.load_state_dict(state)
    dm.setup("test")
    return model_from(ckpt, ckpt_path, device), dm


def run_metrics(ckpt_path: str | Path) -> dict | None:
    """The metrics.json of the run a checkpoint belongs to (<run>/checkpoints/x.ckpt -> <run>/metrics.json),
    None for a checkpoint outside a run directory."""
    path = Path(ckpt_path).resolve().parent.parent / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None
