"""Weights & Biases tracking: the logger behind `logger=wandb` and what a run logs when it ends.

During training Lightning's WandbLogger records the resolved config and per-epoch losses, metrics,
learning rate and throughput. At the end `log_results` adds the test/val metrics and the
seasonal-naive baseline to the run summary, the forecast and interpretation plots as images, and the
model (the exported bundle, else the best checkpoint) as a versioned artifact, then finishes the run.

With no W&B login (no WANDB_API_KEY, no netrc entry) runs are written offline under
`<output_dir>/wandb/` and can be uploaded later with `wandb sync`.
"""

from __future__ import annotations

import logging
import netrc
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

# the run this module started last: finished if still open when the next one starts (a failed
# sweep trial in the same process must not hand its run to the next trial)
_last_run = None


def has_credentials() -> bool:
    """True when wandb could log in without a prompt: an API key or token in the environment, or a
    netrc entry for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return bool(netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str | None) -> str | None:
    """The `mode` for wandb.init: the configured one; else None (wandb's own choice: WANDB_MODE,
    `wandb offline`/`wandb online`) when that can work, i.e. WANDB_MODE is set or we are logged in;
    else "offline" so a run never stops at a login prompt."""
    if mode:
        return mode
    if os.environ.get("WANDB_MODE") or has_credentials():
        return None
    return "offline"


def _sweep_identity() -> tuple[str | None, str | None]:
    """(group, name) of a Hydra multirun job: the Optuna study (or sweep directory) and the trial (or job) number."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None, None
    if hc.mode != RunMode.MULTIRUN:
        return None, None
    group = hc.sweeper.get("study_name") or Path(hc.sweep.dir).name
    number = hc.sweeper.get("trial")  # the Optuna trial number: unique across the workers of a study
    return str(group), f"{group}-{hc.job.num if number is None else number}"


def wandb_logger(project: str = "fusioncast", entity: str | None = None, name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, mode: str | None = None,
                 save_dir: str = ".", job_type: str = "train", **kwargs) -> WandbLogger:
    """Lightning's WandbLogger with our defaults: offline without a login, sweep trials grouped
    under their study, checkpoints not uploaded by Lightning (`log_results` logs the model once)."""
    import wandb

    global _last_run
    if _last_run is not None and _last_run is wandb.run:
        _last_run.finish(exit_code=1)
    sweep_group, sweep_name = _sweep_identity()
    mode = resolve_mode(mode)
    if mode == "offline":
        log.info("W&B offline: the run is written under %s/wandb; upload it with `wandb sync`", save_dir)
    logger = WandbLogger(project=project, entity=entity, name=name or sweep_name, group=group or sweep_group,
                         tags=list(tags or []), mode=mode, save_dir=save_dir, job_type=job_type, log_model=False,
                         **kwargs)
    _last_run = logger.experiment  # started now (train() logs the config next anyway)
    return logger


def summary_metrics(metrics: dict) -> dict[str, float]:
    """Flat `split/metric`, `baseline/split/metric` (and, for a seed ensemble, `ensemble/seed_<seed>/val/metric`)
    entries of metrics.json for the run summary."""
    out: dict[str, float] = {}
    for split in ("val", "test"):
        for k, v in metrics.get(split, {}).items():
            out[f"{split}/{k}"] = v
        for k, v in metrics.get("baseline", {}).get(split, {}).items():
            out[f"baseline/{split}/{k}"] = v
    for k in ("train_samples_per_sec", "seasonal_period"):
        if k in metrics:
            out[k] = metrics[k]
    for member in metrics.get("ensemble", {}).get("members", []):  # a seed ensemble: each member alone
        for k, v in member["val"].items():
            out[f"ensemble/seed_{member['seed']}/val/{k}"] = v
    return out


def artifact_name(data_name: str) -> str:
    """One artifact per data set, so every training run adds a version (v0, v1, ...) of it."""
    return "fusioncast-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", data_name)


def log_results(loggers: list, metrics: dict, plots: dict[str, list[Path]], model_path: str | Path | None,
                data_name: str) -> None:
    """Summary metrics, plot images and the model artifact into every W&B run among `loggers`, then
    finish those runs. The model is a directory (the exported bundle) or a checkpoint file."""
    import wandb

    global _last_run
    for lg in loggers:
        if not isinstance(lg, WandbLogger):
            continue
        run = lg.experiment
        run.summary.update(summary_metrics(metrics))
        images = {"forecasts": [wandb.Image(str(p), caption=p.stem) for p in plots.get("forecasts", [])]}
        images.update({f"interpretation/{p.stem}": wandb.Image(str(p)) for p in plots.get("interpretation", [])})
        run.log({k: v for k, v in images.items() if v})
        if model_path and Path(model_path).exists():
            path = Path(model_path)
            fmt = "bundle" if path.is_dir() else "checkpoint"
            art = wandb.Artifact(artifact_name(data_name), type="model", metadata={
                "format": fmt, "data": data_name, "test": metrics.get("test", {}),
                "baseline_test": metrics.get("baseline", {}).get("test", {}),
            }, description=f"fusioncast TFT {fmt} trained on {data_name}")
            if path.is_dir():
                art.add_dir(str(path))
            else:
                art.add_file(str(path))
            run.log_artifact(art, aliases=["latest", fmt])
        log.info("W&B run %s: %s", run.id, run.dir)
        run.finish()
        if run is _last_run:
            _last_run = None
