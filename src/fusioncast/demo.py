"""`fusioncast-demo`: from nothing to the dashboard on the synthetic zones in one command.

It trains a short model (experiment=demo: the synthetic taxi zones, calibration=adaptive, exported),
serves the bundle with fusioncast-serve's app on loopback, replays the last hours of the data through
the API as a client would (every hour: a forecast of every zone, then that hour's actuals), so that
the dashboard's monitoring and the online calibration have something to show, then prints the URL and
opens it in the browser. Extra arguments are Hydra overrides of the training (`trainer.max_epochs=1`).

    fusioncast-demo [--out DIR] [--port 8000] [--replay-hours 48] [--no-open] [--exit] [override ...]
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
import webbrowser
from pathlib import Path

log = logging.getLogger("fusioncast.demo")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fusioncast-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="fusioncast-demo", help="the run directory (training output, bundle, store)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replay-hours", type=int, default=48, help="hours of forecasts and actuals replayed")
    p.add_argument("--no-open", action="store_true", help="do not open the browser")
    p.add_argument("--exit", action="store_true", help="stop after the replay (a check that it all works)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the training (key=value)")
    return p.parse_args(argv)


def train_bundle(out: Path, overrides: list[str]) -> tuple[Path, object]:
    """Train and export with experiment=demo (and the overrides) into `out`; (bundle dir, config)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from fusioncast.train import train

    config_dir = str(Path(__file__).resolve().parent / "configs")
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=config_dir):
        cfg = compose(config_name="train.yaml", return_hydra_config=True,
                      overrides=["experiment=demo", *overrides])
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = str(out)
        del cfg.hydra
    GlobalHydra.instance().clear()
    train(cfg)
    return out / "bundle", cfg


def replay(url: str, bundle: Path, cfg, hours: int) -> None:
    """Forecast every zone each hour of the last `hours` (history sent once, then left out: the server
    holds it), posting the hour's actuals after each forecast, as a client in production would."""
    import httpx
    import orjson
    import pandas as pd

    from fusioncast.data.synthetic import make_taxi_demand
    from fusioncast.serve.bundle import Bundle
    from fusioncast.serve.requests import series_payload

    s, d = Bundle.load(bundle).pp.schema, cfg.data
    df = make_taxi_demand(n_zones=d.synthetic.n_zones, days=d.synthetic.days, seed=d.synthetic.seed)
    time_col, target, H, L = s.time_col, s.target, s.max_prediction_length, s.max_encoder_length
    times = pd.DatetimeIndex(sorted(df[time_col].unique()))
    inputs = [*s.time_varying_known_categoricals, *s.time_varying_known_reals, *s.time_varying_unknown_categoricals,
              *s.time_varying_unknown_reals]
    json = {"content-type": "application/json"}

    def send(path: str, obj) -> dict:
        r = httpx.post(url + path, content=orjson.dumps(obj), headers=json, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {r.text}")
        return r.json()

    def actuals(at) -> list[dict]:
        rows = df[df[time_col].isin(at)]
        return [{"series": r["zone"], "time": pd.Timestamp(r[time_col]).isoformat(), "value": float(r[target]),
                 "inputs": {c: r[c].item() if hasattr(r[c], "item") else r[c] for c in inputs}}
                for r in rows.to_dict("records")]

    first = len(times) - hours - H
    send("/v1/actuals", {"actuals": actuals(times[first - L:first])})  # the history the server then holds
    for k in range(hours):
        origin = times[first + k]
        window = df[df[time_col].isin(times[first + k - L:first + k + H])]
        series = [series_payload(g, s, H) for _, g in window.groupby(s.group_ids, sort=True)]
        send("/v1/forecast", {"series": [{k2: v for k2, v in x.items() if k2 != "history"} for x in series]})
        send("/v1/actuals", {"actuals": actuals([origin])})


def main(argv=None) -> None:
    import uvicorn

    from fusioncast.serve.app import ServeConfig, create_app

    args = parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per replayed request otherwise
    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    bundle, cfg = train_bundle(out, args.overrides)
    log.info("trained and exported %s in %.0f s", bundle, time.perf_counter() - t0)
    store = out / "actuals.sqlite3"
    for stale in out.glob("actuals.sqlite3*"):  # a fresh store: the replay starts from nothing
        stale.unlink()
    app = create_app(ServeConfig(bundle=str(bundle), store=str(store), cache_dir=str(out / "ort-cache")))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning"))
    url = f"http://127.0.0.1:{args.port}"

    def client() -> None:
        while not server.started:
            time.sleep(0.1)
        try:
            replay(url, bundle, cfg, args.replay_hours)
            print(f"\nfusioncast demo: the dashboard is at {url}/ (API docs at {url}/docs); Ctrl-C stops it\n",
                  flush=True)
            if not args.no_open and not args.exit:
                webbrowser.open(url + "/")
        except Exception:
            log.exception("the replay failed")
            server.should_exit = True
            raise
        if args.exit:
            server.should_exit = True

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    server.run()


if __name__ == "__main__":
    main()
