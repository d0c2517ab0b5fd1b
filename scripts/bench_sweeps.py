"""The same Optuna search with and without pruning, in one run (docs/benchmarks/sweeps.md).

    python scripts/bench_sweeps.py                       # 20 trials, sampler seeds 1 and 2, nyc_taxi
    python scripts/bench_sweeps.py --trials 4 --max-epochs 2 --seeds 1   # a smoke run
    python scripts/bench_sweeps.py --together   # both seeds' four sweeps at once (all under the same load)
    python scripts/bench_sweeps.py --serial     # one sweep at a time: each has the machine to itself

For each seed the two sweeps (`hparams_search=optuna` with `hydra/sweeper/pruner=<--pruner>`, and with
`hydra/sweeper/pruner=none`) run at the same time, one thread each, so both see the same machine load. Each
reports its wall time, its CPU time (trials run in the sweep's process), the best validation loss
of its study (val/loss of the best trial's metrics.json) and the epochs its trials trained. Results go to
<out>/bench_sweeps.json and a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState


def sweep(out: Path, name: str, seed: int, pruner: str, args: argparse.Namespace) -> tuple[subprocess.Popen, Path]:
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fusioncast.train", "hparams_search=optuna", f"data={args.data}", f"seed={seed}",
           f"hydra/sweeper/pruner={pruner}", f"hydra.sweeper.n_trials={args.trials}",
           f"hydra.sweeper.storage=sqlite:///{run_dir}/optuna.db", f"hydra.sweeper.study_name={name}",
           f"hydra.sweep.dir={run_dir}/trials", f"paths.log_dir={run_dir}", f"trainer.max_epochs={args.max_epochs}",
           f"trainer.limit_train_batches={args.train_batches}", f"trainer.limit_val_batches={args.val_batches}",
           "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "data.eval_stride=24",
           # trials in the sweep's own process: its CPU time (wait4) then covers them
           "hydra/launcher=basic", *args.overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    log = open(run_dir / "sweep.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), run_dir


def summary(run_dir: Path, name: str, wall: float) -> dict:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir}/optuna.db")
    states = [t.state for t in study.trials]
    return {"wall_s": round(wall, 1), "best_val_loss": study.best_value, "best_trial": study.best_trial.number,
            "complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL),
            "epochs": sum(len(t.intermediate_values) for t in study.trials)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="nyc_taxi")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--pruner", default="successive_halving")
    p.add_argument("--max-epochs", type=int, default=12)
    p.add_argument("--train-batches", type=int, default=6)
    p.add_argument("--val-batches", type=int, default=10)
    p.add_argument("--together", action="store_true", help="run the sweeps of all seeds at the same time")
    p.add_argument("--serial", action="store_true", help="run one sweep at a time (fair wall time on a quiet machine)")
    p.add_argument("--out", type=Path, default=Path("bench_sweeps"))
    p.add_argument("overrides", nargs="*", help="more key=value overrides for both sweeps")
    args = p.parse_args()
    load = {"before": os.getloadavg()}
    results = []
    # all seeds at once (--together) or one seed after the other; the two sweeps of a seed always run together
    # --serial: one sweep at a time, so that each has the machine to itself and wall time compares fairly
    kinds = (("pruned", args.pruner), ("full", "none"))
    jobs = [[(seed, kind) for seed in args.seeds for kind in kinds]] if args.together else \
        [[(seed, kind)] for seed in args.seeds for kind in kinds] if args.serial else \
        [[(seed, kind) for kind in kinds] for seed in args.seeds]
    rows = {seed: {"seed": seed} for seed in args.seeds}
    for round_ in jobs:
        started = time.perf_counter()
        pending = {(seed, kind): sweep(args.out, f"seed{seed}-{kind}", seed, pruner, args)
                   for seed, (kind, pruner) in round_}
        while pending:
            for (seed, kind), (proc, run_dir) in list(pending.items()):
                # wait4: the CPU time of the sweep, its trials included, which the machine's load does
                # not stretch the way it stretches wall time
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    if proc.returncode:
                        sys.exit(f"{run_dir} failed: see {run_dir}/sweep.log")
                    rows[seed][kind] = summary(run_dir, f"seed{seed}-{kind}", time.perf_counter() - started)
                    rows[seed][kind]["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)
                    del pending[(seed, kind)]
            time.sleep(1)
    for row in rows.values():
        results.append(row)
        print(json.dumps(row), flush=True)
    load["after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_sweeps.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                            "load": load, "results": results}, indent=2))
    print(f"\nload average before {load['before']}, after {load['after']}\n")
    print("| sampler seed | sweep | wall time (s) | CPU time (s) | best val loss | trials complete / pruned | "
          "epochs trained |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for kind in ("full", "pruned"):
            s = r[kind]
            label = "no pruning" if kind == "full" else f"pruner={args.pruner}"
            print(f"| {r['seed']} | {label} | {s['wall_s']} | {s['cpu_s']} | {s['best_val_loss']:.4f} | "
                  f"{s['complete']} / {s['pruned']} | {s['epochs']} |")
        f, p = r["full"], r["pruned"]
        print(f"| {r['seed']} | ratio | {f['wall_s'] / p['wall_s']:.2f}x | {f['cpu_s'] / p['cpu_s']:.2f}x | | | "
              f"{f['epochs'] / p['epochs']:.2f}x |")


if __name__ == "__main__":
    main()
