"""Where the built-in data sets come from, and how a table is read.

A named set reads a local copy when one is given (the config's `path`, or `FUSIONCAST_DATA_DIR`
holding the public file name); otherwise it downloads the public file once into a cache
(`FUSIONCAST_CACHE`, default ~/.cache/fusioncast) and checks its sha256.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fusioncast.data.schema import SchemaError


@dataclass(frozen=True)
class Source:
    filename: str
    url: str
    sha256: str


SOURCES = {
    "nyc_taxi": Source(
        "nyc_taxi.csv",
        "https://raw.githubusercontent.com/numenta/NAB/master/data/realKnownCause/nyc_taxi.csv",
        "d8fa6f7f0734bf5c8be12c52a94e20a82664c397d9dec4449156bd453d32856d",
    ),
    "stallion": Source(
        "stallion.parquet",
        "https://raw.githubusercontent.com/sktime/pytorch-forecasting/main/examples/data/stallion.parquet",
        "22397fe65d91eb4ac8ae05d307f64244a36649f58d6f3232da98ec1f13e3d0ba",
    ),
    "etth1": Source(
        "ETTh1.csv",
        "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh1.csv",
        "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
    ),
    # the whole year 2014-07-01 .. 2015-06-30 of Cui, Ahmad & Hawkins 2016 (Numenta's 3-line header)
    "nyc_taxi_numenta": Source(
        "nyc_taxi_numenta_year.csv",
        "https://raw.githubusercontent.com/numenta/htmresearch/master/projects/sequence_prediction/"
        "continuous_sequence/data/nyc_taxi.csv",
        "092d957f5bb0d2cd62f85098ed2268114a47b4738a5f4b29ea6be4be7349fc4d",
    ),
    # M4's 414 hourly series: wide files, training part and 48-step test horizons (data/wide.py)
    "m4_hourly_train": Source(
        "m4_hourly_train.csv",
        "https://raw.githubusercontent.com/Mcompetitions/M4-methods/master/Dataset/Train/Hourly-train.csv",
        "ea59b7783573c49077a835ab6465c7d66f1474783360f310988a9a737fbca62f",
    ),
    "m4_hourly_test": Source(
        "m4_hourly_test.csv",
        "https://raw.githubusercontent.com/Mcompetitions/M4-methods/master/Dataset/Test/Hourly-test.csv",
        "71a57fccb15e534d973626ada4fb87febf789e9317715b7cc6dd3b5f90db6f42",
    ),
}
# named sets that are read from one or more source files by a reader of their own
COMPOSITE = {"m4_hourly": ("m4_hourly_train", "m4_hourly_test")}


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV or parquet file (by suffix) into a DataFrame."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    elif path.suffix in (".csv", ".gz", ".txt"):
        try:
            df = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise SchemaError(f"data file {path} is empty: no header, no rows") from None
    else:
        raise SchemaError(f"cannot read '{path}': use a .csv or .parquet file")
    if df.empty:
        raise SchemaError(f"data file {path} has no rows (columns: {list(df.columns)})")
    return df


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(src: Source, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(src.url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        raise RuntimeError(
            f"could not download {src.filename} from {src.url} ({e}); put a copy in FUSIONCAST_DATA_DIR "
            "or pass data.path=..."
        ) from e
    digest = _sha256(tmp)
    if digest != src.sha256:
        tmp.unlink()
        raise RuntimeError(f"{src.url} has sha256 {digest}, expected {src.sha256}")
    tmp.replace(dest)


def locate(name: str, path: str | None = None) -> Path:
    """The local file for a named set: `path`, else FUSIONCAST_DATA_DIR, else the download cache."""
    if path:
        return Path(path).expanduser()
    if name not in SOURCES:
        known = sorted({*SOURCES, *COMPOSITE} - {p for parts in COMPOSITE.values() for p in parts})
        raise SchemaError(f"data set '{name}' has no public source; give data.path=... (known: {known})")
    src = SOURCES[name]
    data_dir = os.environ.get("FUSIONCAST_DATA_DIR")
    if data_dir and (Path(data_dir) / src.filename).exists():
        return Path(data_dir) / src.filename
    cached = Path(os.environ.get("FUSIONCAST_CACHE", Path.home() / ".cache" / "fusioncast")) / src.filename
    if not cached.exists():
        _download(src, cached)
    return cached


def load_named(name: str, path: str | None = None, synthetic: dict | None = None) -> pd.DataFrame:
    """The raw table of a built-in set (or of any file when `path` is given).

    `synthetic` holds the generator's options (zones, days, seed) for `name="synthetic"`.
    """
    if name == "synthetic" and not path:
        from fusioncast.data.synthetic import make_taxi_demand

        return make_taxi_demand(**(synthetic or {}))
    if name == "custom" and not path:
        raise SchemaError("data=custom needs data.path=FILE (a .csv or .parquet table)")
    if name == "m4_hourly":
        from fusioncast.data.wide import read_m4

        return read_m4(*composite_paths(name, path))
    if name == "nyc_taxi_numenta":
        from fusioncast.data.wide import read_numenta

        return read_numenta(locate(name, path))
    return read_table(locate(name, path))


def composite_paths(name: str, path: str | None = None) -> list[Path]:
    """The local files of a set made of several (M4: train, test). `path` is a folder holding them under
    their public names, or the first file, the others beside it with "train" in its name replaced by
    "test" (m4_hourly_train.csv -> m4_hourly_test.csv, Hourly-train.csv -> Hourly-test.csv)."""
    parts = COMPOSITE[name]
    if not path:
        return [locate(p) for p in parts]
    path = Path(path).expanduser()
    if path.is_dir():
        return [path / SOURCES[p].filename for p in parts]
    return [path, path.with_name(path.name.replace("train", "test").replace("Train", "Test"))]
