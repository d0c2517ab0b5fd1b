"""`fusioncast-predict bundle=DIR input=FILE output=FILE [backend=onnx|torch ckpt_path=...]`: batch scoring.

For every series of the table, forecasts the `max_prediction_length` steps after its last observed
target. Rows after it (target empty) supply the known future inputs; calendar features are derived.
Only the rows a forecast uses are read (batch.select), then validated and turned into windows chunk by
chunk of series (batch.windows), giving the model inputs of training's pandas path (table_windows below:
schema.validate → grid → calendar → Preprocessor.transform → data.inference.assemble_window, as a served
request), so the server and this job give the same forecast for the same input. Output: a long table
with the group ids, the time column and one column per quantile (`q0.1`, `q0.5`, `q0.9`), parquet or CSV.
No Hydra and no torch unless backend=torch: it runs with the `serve` extra alone.

With a bundle trained with calibration=adaptive, `replay=N` also forecasts the N origins before each
series' last observation, whose actuals the table holds, and tracks the calibration offsets over
them in time order (Calibration.track, as evaluation does over the test windows) before it applies
them to the forecast: the intervals follow the table's recent errors, not only validation's.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

import pandas as pd

from fusioncast.batch.score import check_replay, runner, score, whole_number, write_table

log = logging.getLogger(__name__)


def predict(cfg: Mapping) -> pd.DataFrame:
    """Score cfg.input with the bundle (backend=onnx) or the checkpoint (backend=torch); write cfg.output.
    `cfg`: the options of configs/predict.yaml (a dict, or the DictConfig Hydra composes)."""
    if cfg.get("engine", "local") == "spark":
        from fusioncast.batch.spark import predict_spark

        return predict_spark(cfg)
    if cfg.get("engine", "local") != "local":
        raise ValueError(f"engine must be local or spark, got {cfg.get('engine')!r}")
    replay = whole_number(cfg.get("replay") or 0, "replay must be a whole number of past origins per series")
    chunk_size = whole_number(cfg.get("chunk_size") or 4096, "chunk_size must be a whole number of series")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 series, got {chunk_size}")
    pp, quantiles, run, calibration = runner(cfg)
    if replay:
        check_replay(calibration, replay)  # before any work is done
    table = score(cfg["input"], pp, quantiles, run, cfg["batch_size"], calibration, replay, chunk_size)
    if cfg["output"]:
        log.info("wrote %d forecasts of %d series to %s", len(table),
                 len(table) // pp.schema.max_prediction_length, write_table(table, cfg["output"]))
    return table


def main(argv: list[str] | None = None) -> None:
    """`fusioncast-predict key=value ...` (the keys of configs/predict.yaml)."""
    from fusioncast.batch.options import parse
    from fusioncast.serve.bundle import BundleError

    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        from fusioncast.batch.options import defaults

        print(__doc__.split("\n\n")[0] + "\n\noptions (configs/predict.yaml):\n" +
              "\n".join(f"  {k}={v}" for k, v in defaults().items()))
        return
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        predict(parse(argv))
    except (ValueError, BundleError, OSError) as e:  # the input's or the bundle's fault: one line, exit 1
        sys.exit(f"fusioncast-predict: {e}")


if __name__ == "__main__":
    main()
