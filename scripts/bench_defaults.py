"""Which model defaults generalise across the shared real sets, chosen on validation only.

    python scripts/bench_defaults.py                                  # every candidate on every set
    python scripts/bench_defaults.py --only current,skip --sets stallion,etth1

A new user gets `configs/model/tft.yaml` untouched (`data=custom` with no tuning), so its values should
be the ones that do best across sets, not on one. Each candidate is a set of model overrides on top
of those defaults; each is trained on every shared real set through its `data=` config with the
look-back and horizon that set's `experiment=` uses (nothing else from the experiment: no tuned model),
with one training budget for all, and scored by validation MAE over the seasonal-naive MAE on the same
windows (so sets of any scale weigh alike). The table ranks candidates by the geometric mean of that
ratio across sets (over seeds too, with --seeds); the test split is never read for the choice.
Differences of a few per cent are within seed noise: the current defaults stay unless a candidate
wins clearly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_accuracy import compose  # noqa: E402  (after the sys.path entry) the same config composition as the console scripts

# candidate defaults: model overrides on top of configs/model/tft.yaml. The study that set today's
# defaults started from linear_skip=0, so every candidate says which skip it has.
NO_SKIP, SKIP = "model.linear_skip=0", "model.linear_skip=${data.max_encoder_length}"
CANDIDATES = {
    "no linear skip": [NO_SKIP],  # the defaults before that study
    "hidden 64": [NO_SKIP, "model.hidden_size=64"],
    "lr 1e-3": [NO_SKIP, "model.optimizer.lr=0.001"],
    "dropout 0.2": [NO_SKIP, "model.dropout=0.2"],
    "variable size 16": [NO_SKIP, "model.variable_size=16"],
    "linear skip": [SKIP],  # the default now
    "linear skip (closed form)": [SKIP, "model.linear_skip_fit=lstsq"],
    "linear skip + variable size 16": [SKIP, "model.variable_size=16"],
}
# each set through its data config, with the lengths its experiment config uses
SETS = {
    "stallion": ["data=stallion", "data.max_encoder_length=36", "data.max_prediction_length=6"],
    "nyc_taxi": ["data=nyc_taxi", "data.max_encoder_length=96", "data.max_prediction_length=24"],
    "etth1": ["data=etth1", "data.max_encoder_length=168", "data.max_prediction_length=24"],
}
# the shrinkage step is off: it would choose on the very validation windows that score the candidates
BUDGET = ["trainer.max_epochs=8", "callbacks.early_stopping.patience=3", "model.shrink_correction=false", "budget=null",
          "export=false", "logger=none",
          "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def run(candidate: str, data: str, seed: int, out: Path, extra: tuple[str, ...] = ()) -> dict:
    """Train one candidate on one set; `extra` overrides come last (tests shorten the budget with them)."""
    from fusioncast.train import train

    cfg = compose(None, out, [*SETS[data], *BUDGET, *CANDIDATES[candidate], f"seed={seed}", *extra])
    t0 = time.perf_counter()
    m = train(cfg)
    return {"candidate": candidate, "set": data, "seed": seed, "val_mae": m["val"]["mae"],
            "naive_val_mae": m["baseline"]["val"]["mae"], "ratio": m["val"]["mae"] / m["baseline"]["val"]["mae"],
            "val_coverage": m["val"]["coverage_p10_p90"], "seconds": time.perf_counter() - t0}


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def table(rows: list[dict], sets: list[str]) -> str:
    """Per candidate and set, the geometric mean over seeds of val MAE / naive (its runs' ratios)."""
    by: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        by.setdefault((r["candidate"], r["set"]), []).append(r["ratio"])
    cands = sorted({r["candidate"] for r in rows}, key=lambda c: list(CANDIDATES).index(c))
    score = {c: geomean([geomean(by[c, s]) for s in sets]) for c in cands if all((c, s) in by for s in sets)}
    lines = ["| candidate (model overrides) | " + " | ".join(f"{s}: val MAE / naive" for s in sets)
             + " | geometric mean | rank |", "| --- |" + " ---: |" * (len(sets) + 2)]
    ranked = sorted(score, key=score.get)
    for c in cands:
        cells = [f"{geomean(by[c, s]):.3f} ({', '.join(f'{x:.3f}' for x in by[c, s])})" if (c, s) in by else "-"
                 for s in sets]
        g = f"{score[c]:.3f}" if c in score else "-"
        rank = str(ranked.index(c) + 1) if c in score else "-"
        lines.append(f"| {c}: `{' '.join(CANDIDATES[c]) or 'configs/model/tft.yaml'}` | " + " | ".join(cells)
                     + f" | {g} | {rank} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated candidates (default: all)")
    p.add_argument("--sets", default=",".join(SETS), help="comma-separated sets")
    p.add_argument("--seeds", default="42", help="comma-separated seeds (each cell trains once per seed)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    p.add_argument("--out", type=Path, default=Path("bench_defaults"))
    args = p.parse_args()
    os.environ.setdefault("FUSIONCAST_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    import torch

    torch.set_num_threads(args.threads)
    candidates = args.only.split(",") if args.only else list(CANDIDATES)
    sets = args.sets.split(",")
    for c in candidates + sets:
        if c not in CANDIDATES and c not in SETS:
            sys.exit(f"unknown candidate or set {c!r}: candidates {list(CANDIDATES)}, sets {list(SETS)}")
    results = args.out / "bench_defaults.json"
    rows = json.loads(results.read_text()) if results.exists() else []  # a stopped run resumes
    done = {(r["candidate"], r["set"], r.get("seed", 42)) for r in rows}
    for seed in [int(x) for x in args.seeds.split(",")]:
        for c in candidates:
            for s in sets:
                if (c, s, seed) in done:
                    continue
                r = run(c, s, seed, args.out / c.replace(" ", "_") / s / str(seed))
                rows.append(r)
                print(f"{c} on {s}, seed {seed}: val MAE {r['val_mae']:.4g} / naive {r['naive_val_mae']:.4g} = "
                      f"{r['ratio']:.3f} ({r['seconds']:.0f} s)", flush=True)
                results.parent.mkdir(parents=True, exist_ok=True)
                results.write_text(json.dumps(rows, indent=2))
    md = table([r for r in rows if r["candidate"] in candidates], sets)
    (args.out / "bench_defaults.md").write_text(md + "\n")
    print("\n" + md)


if __name__ == "__main__":
    main()
