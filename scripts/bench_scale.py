"""How batch scoring's cost grows with the number of series and the length of their history.

    python scripts/bench_scale.py --zones 12 263 1000            # train, then score, per size
    python scripts/bench_scale.py --zones 1000 --days 91 182 365  # memory against history length

For each size: `fusioncast-train data=synthetic data.synthetic.n_zones=N data.synthetic.days=D
trainer.max_epochs=1 trainer.limit_train_batches=100 data.eval_stride=24` (wall, peak RSS), the same
generated table with each zone's last 24 targets blanked written as parquet, then `fusioncast-predict` on
it as a command (wall and peak RSS with start-up) and the scorer in this process (batch.score.score on the
file with the bundle loaded: series/s, start-up excluded, median of --repeats; with --old also the pandas
path over every row that the job used before, once). A bundle trained once per
zone count is reused for the other history lengths (`--reuse`). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of a command, measured by GNU time around it: the rusage of a child
    forked from this (large) process would count the parent's pages it held before exec."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "offline"}
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.decode()[-2000:]}")
        return wall, int(rss.read().split()[-1]) / 1e6  # KiB -> GB (1e6 KiB ~ 1.02 GB)


def table(zones: int, days: int, path: Path) -> int:
    """The training table with each zone's last 24 targets blanked, as parquet; its row count."""
    from fusioncast.data.synthetic import make_taxi_demand

    df = make_taxi_demand(n_zones=zones, days=days)
    last = df.groupby("zone").timestamp.transform("max")
    df.loc[df.timestamp > last - pd.Timedelta(hours=24), "pickups"] = np.nan
    df.to_parquet(path, index=False)
    return len(df)


def breakdown(path: Path, pp, quantiles, run, calibration) -> tuple[float, float, float]:
    """Seconds of batch.score.score's stages: reading and selecting the rows, validation and windows, the model."""
    import dataclasses

    from fusioncast.batch.score import forecast_table
    from fusioncast.batch.select import OBSERVED_BEFORE, select
    from fusioncast.batch.windows import chunk_windows, series_chunks
    from fusioncast.data.schema import validate

    schema = dataclasses.replace(pp.schema, freq=pp.freq)
    t0 = time.perf_counter()
    rows = select(path, schema, pp.freq)
    t1 = time.perf_counter()
    windows = [chunk_windows(c, pp) for c in series_chunks(validate(rows, schema, keep=(OBSERVED_BEFORE,)), schema,
                                                           4096)]
    t2 = time.perf_counter()
    for w in windows:
        forecast_table(w, pp, quantiles, run, 1024, calibration)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zones", type=int, nargs="+", default=[12, 263, 1000])
    p.add_argument("--days", type=int, nargs="+", default=[365])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    p.add_argument("--old", action="store_true", help="also time the pandas path over every row (table_windows), once")
    p.add_argument("--work", type=Path, help="folder for runs and tables (default: a temporary one)")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    py = sys.executable
    rows = []
    for zones in args.zones:
        run_dir = work / f"train-{zones}"
        train = ("", "")
        if not (run_dir / "bundle" / "bundle.json").is_file():
            wall, rss = timed([py, "-m", "fusioncast.train", "data=synthetic", f"data.synthetic.n_zones={zones}",
                               f"data.synthetic.days={max(args.days)}", "trainer.max_epochs=1",
                               "trainer.limit_train_batches=100", "data.eval_stride=24",
                               f"hydra.run.dir={run_dir}"])
            train = (f"{wall:.0f} s", f"{rss:.2f} GB")
        for days in args.days:
            path = work / f"table-{zones}-{days}.parquet"
            n_rows = table(zones, days, path)
            wall, rss = timed([py, "-m", "fusioncast.predict", f"bundle={run_dir / 'bundle'}", f"input={path}",
                               f"output={work / 'forecasts.parquet'}", f"threads={args.threads}"])
            from fusioncast.batch.score import onnx_runner, score

            pp, quantiles, run, calibration = onnx_runner(str(run_dir / "bundle"), threads=args.threads)
            times, stages = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = score(path, pp, quantiles, run, 1024, calibration)
                times.append(time.perf_counter() - t0)
                stages.append(breakdown(path, pp, quantiles, run, calibration))
            series = len(out) // pp.schema.max_prediction_length
            select_s, windows_s, model_s = np.median(stages, axis=0)
            old = ""
            if args.old:
                from fusioncast.batch.score import forecast_table, table_windows
                from fusioncast.data.sources import read_table

                t0 = time.perf_counter()
                forecast_table(table_windows(read_table(path), pp), pp, quantiles, run, 1024, calibration)
                old = f"{series / (time.perf_counter() - t0):,.0f}"
            rows.append((zones, days, n_rows, *train, f"{wall:.1f} s", f"{rss:.2f} GB",
                         f"{series / np.median(times):,.0f}", f"{select_s:.2f} / {windows_s:.2f} / {model_s:.2f} s",
                         old))
            train = ("", "")
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average at the end)\n")
    print("| zones | days | rows | train wall | train peak RSS | predict wall | predict peak RSS | scorer series/s "
          "| read+select / windows / model | pandas path series/s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for zones, days, n_rows, tw, tr, pw, pr, sps, parts, old in rows:
        print(f"| {zones:,} | {days} | {n_rows:,} | {tw} | {tr} | {pw} | {pr} | {sps} | {parts} | {old} |")


if __name__ == "__main__":
    main()
