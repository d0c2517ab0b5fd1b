"""Tiny models on the shared real sets, briefly trained and exported: the bundles the export, predict
and serving tests share (built once per test session; parity needs real windows, not a good model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L

from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.export import export_bundle
from fusioncast.models.module import TFTModule
from tests.conftest import compose_config, needs_shared

REAL_FILES = {"nyc_taxi": "nyc_taxi.csv", "stallion": "stallion.parquet", "etth1": "ETTh1.csv"}
# a small model, a few training steps; windows shortened on the long-history sets to keep it quick
TINY_REAL = ["model.hidden_size=16", "model.scheduler=null", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
             "trainer.limit_val_batches=0", "+trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
             "trainer.enable_model_summary=false", "seed=0"]
SHORTER = {"nyc_taxi": ["data.max_encoder_length=48", "data.max_prediction_length=12"],
           "etth1": ["data.max_encoder_length=48", "data.max_prediction_length=12"]}


@dataclass
class RealBundle:
    name: str
    path: Path                  # the bundle directory
    checkpoint: str             # Lightning checkpoint of the same weights
    module: TFTModule
    dm: TimeSeriesDataModule


class BundleFactory:
    """name -> RealBundle, built on first use."""

    def __init__(self, tmp_path_factory):
        self.tmp, self.cache = tmp_path_factory, {}

    def __call__(self, name: str) -> RealBundle:
        if name not in self.cache:
            needs_shared(REAL_FILES[name])
            out = self.tmp.mktemp(name)
            cfg = compose_config("train.yaml", out, [f"data={name}", *TINY_REAL, *SHORTER.get(name, [])])
            L.seed_everything(0)
            dm = hydra.utils.instantiate(cfg.data, _convert_="object")
            dm.setup("fit")
            module = hydra.utils.instantiate(cfg.model, data_kwargs=dm.model_kwargs(), _convert_="object")
            trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[], logger=False, enable_checkpointing=False)
            trainer.fit(module, datamodule=dm)
            checkpoint = str(out / "tiny.ckpt")
            trainer.save_checkpoint(checkpoint)  # holds the datamodule's fitted preprocessing, as training's do
            module.eval()
            path = export_bundle(module, dm, out / "bundle", windows=64, checkpoint=checkpoint)
            self.cache[name] = RealBundle(name, path, checkpoint, module, dm)
        return self.cache[name]
