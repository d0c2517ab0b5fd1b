"""`fusioncast-eval ckpt_path=...`: metrics.json, an optional backtest, plots and report.md from a checkpoint."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from fusioncast.evaluation.backtest import backtest, write_backtest
from fusioncast.evaluation.forecasts import evaluate_model, write_metrics
from fusioncast.postfit.calibration import Calibration
from fusioncast.reporting.report import write_plots, write_report
from fusioncast.training.checkpoint import load_with_data


@hydra.main(version_base="1.3", config_path="configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    """Recompute metrics.json (val, test, baseline) from a checkpoint into this run's output directory."""
    overrides = OmegaConf.to_container(cfg.get("data") or {}, resolve=True)
    module, dm = load_with_data(cfg.ckpt_path, overrides)
    calibration = OmegaConf.to_container(cfg.calibration, resolve=True) if cfg.get("calibration") else None
    metrics = evaluate_model(module, dm, calibration=calibration)
    metrics["checkpoint"] = str(cfg.ckpt_path)
    print(f"wrote {write_metrics(metrics, cfg.paths.output_dir)}")
    if cfg.get("backtest") and cfg.backtest.origins:
        result = backtest(module, dm, cfg.backtest.origins, cfg.backtest.split,
                          Calibration.from_dict(metrics.get("calibration")))
        print("wrote {} and {}".format(*write_backtest(result, cfg.paths.output_dir)))
    plot_paths = write_plots(module, dm, cfg.paths.output_dir,
                             calibration=Calibration.from_dict(metrics.get("calibration")))
    print(f"wrote {write_report(metrics, plot_paths, cfg.paths.output_dir, title=f'fusioncast-eval: {dm.hparams.name}')}")


if __name__ == "__main__":
    main()
