"""`fusioncast-predict`'s key=value options without Hydra: its defaults are configs/predict.yaml's flat keys.

The serving image installs no Hydra (nor torch), and batch scoring with a bundle must run there; the
options are a flat list of scalars, so a line parser reads the YAML file and the command line alike.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "predict.yaml"
INTEGERS = ("threads", "batch_size", "replay", "chunk_size", "spark_buckets")
REQUIRED = "???"
_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):\s*(.*?)\s*$")


def _value(key: str, text: str):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text in ("null", "~", ""):
        return None
    if key in INTEGERS and re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    return text  # anything else stays text: the job checks each option and names a bad one


def defaults(path: Path = CONFIG) -> dict:
    """The top-level scalar keys of predict.yaml (its `defaults:` list and comments skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        m = _LINE.match(line.split(" #")[0])
        if m and m.group(1) != "defaults":
            out[m.group(1)] = _value(m.group(1), m.group(2))
    return out


def parse(argv: list[str], base: dict | None = None) -> dict:
    """The options: predict.yaml's defaults overridden by `key=value` arguments; unknown keys and missing
    required ones are errors naming them."""
    opts = dict(defaults() if base is None else base)
    for arg in argv:
        key, eq, text = arg.partition("=")
        key = key.lstrip("+")
        if key.startswith(("hydra.", "hydra/")):
            continue  # the Hydra CLI's run-directory options: this job writes no run directory
        if not eq:
            raise ValueError(f"arguments are key=value; got {arg!r} (keys: {', '.join(sorted(opts))})")
        if key not in opts:
            raise ValueError(f"unknown option {key!r}; options are {', '.join(sorted(opts))}")
        opts[key] = _value(key, text)
    missing = [k for k, v in opts.items() if v == REQUIRED]
    if missing:
        raise ValueError(f"missing option(s) {', '.join(missing)}: give {' '.join(k + '=...' for k in missing)}")
    return opts
