"""The synthetic zones of the `synthetic_bundle` fixture as requests and actuals, and a real server with a
store: shared by the actuals, online calibration and dashboard tests."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pandas as pd

from fusioncast.data.synthetic import make_taxi_demand
from fusioncast.serve.bundle import Bundle
from tests.serve.test_requests import forecast_table, requests_for

JSON = {"content-type": "application/json"}


class Zones:
    """The table the bundle was trained on (tests/conftest.py: 6 zones, 21 days) and its schema."""

    def __init__(self, bundle_path):
        self.bundle = Bundle.load(bundle_path)
        self.schema = self.bundle.pp.schema
        self.df = make_taxi_demand(n_zones=6, days=21, seed=0)
        self.times = pd.DatetimeIndex(sorted(self.df[self.schema.time_col].unique()))
        self.zones = sorted(self.df["zone"].unique())
        self.L, self.H = self.schema.max_encoder_length, self.schema.max_prediction_length
        self.inputs = [*self.schema.time_varying_known_categoricals, *self.schema.time_varying_known_reals,
                       *self.schema.time_varying_unknown_categoricals, *self.schema.time_varying_unknown_reals]

    def request(self, origin, history: bool = True) -> dict:
        """A forecast request for every zone whose first forecast time is `origin`."""
        series = requests_for(forecast_table(self.df, self.schema, origin), self.schema, self.L)
        if not history:
            series = [{k: v for k, v in s.items() if k != "history"} for s in series]
        return {"series": series}

    def actuals(self, times, zones=None) -> list[dict]:
        s = self.schema
        rows = self.df[self.df[s.time_col].isin(pd.DatetimeIndex(times))]
        if zones is not None:
            rows = rows[rows["zone"].isin(zones)]
        out = []
        for r in rows.sort_values([s.time_col, "zone"]).itertuples(index=False):
            r = r._asdict()
            out.append({"series": r["zone"], "time": pd.Timestamp(r[s.time_col]).isoformat(), "value": r[s.target],
                        "inputs": {c: (r[c].item() if hasattr(r[c], "item") else r[c]) for c in self.inputs}})
        return out


def post(url: str, path: str, obj=None, content: bytes | None = None, headers: dict | None = None) -> httpx.Response:
    import orjson

    body = orjson.dumps(obj) if content is None else content
    return httpx.post(url + path, content=body, headers={**JSON, **(headers or {})}, timeout=60)


def store_url(kind: str, tmp_path, postgres_url=None, redis_url=None) -> str:
    """A fresh, empty store of that kind: a SQLite file, a new PostgreSQL database, a flushed Redis database."""
    if kind == "sqlite":
        return str(tmp_path / f"actuals-{uuid.uuid4().hex[:8]}.sqlite3")
    if kind == "postgresql":
        import psycopg

        base = postgres_url.replace("postgresql+psycopg://", "postgresql://")
        name = f"fc_actuals_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(base, autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return base.rsplit("/", 1)[0] + "/" + name
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return redis_url


def quantiles(answer: dict) -> np.ndarray:
    """(series, H, Q) of a forecast answer."""
    return np.stack([np.array([f["quantiles"][k] for k in sorted(f["quantiles"], key=float)]).T
                     for f in answer["forecasts"]])
