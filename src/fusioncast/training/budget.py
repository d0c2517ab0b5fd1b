"""The training budget: `budget=15m` (or `trainer.max_time=...`) caps the wall time of one model's fit.

The budget becomes Lightning's `max_time`: when it runs out, the current epoch stops, validation runs
once more and the best checkpoint so far (by validation loss) is what is evaluated and exported. It
counts the fit only (training and the per-epoch validation), not evaluation, export or plots; each
member of a seed ensemble gets the whole budget. docs/training.md has the details.
"""

from __future__ import annotations

import datetime as dt
import math
import re

# "1h30m", "15m", "90s", "2h", "1.5h": numbers with units d/h/m/s, summed
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_HUMAN = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")


def parse_budget(value) -> dt.timedelta | None:
    """A budget as a timedelta (None: no budget). Accepts Lightning's "DD:HH:MM:SS", "HH:MM:SS", "MM:SS",
    units summed ("1h30m", "15m", "90s"), a bare number of minutes, a timedelta, or a mapping of
    timedelta's keywords ({minutes: 15}); null, "none" or 0 mean no budget."""
    if value is None or isinstance(value, dt.timedelta):
        return value or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # a bool falls through: refused below
        seconds = 60.0 * value
    elif hasattr(value, "items"):
        try:
            seconds = dt.timedelta(**{str(k): float(v) for k, v in value.items()}).total_seconds()
        except TypeError as e:
            raise ValueError(f"budget as a mapping takes timedelta's keys (days, hours, minutes, seconds): {e}") from e
    else:
        text = str(value).strip().lower()
        if text in ("", "none", "null", "off"):
            return None
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = 60.0 * float(text)
        elif re.fullmatch(r"\d+(?::\d+){1,3}", text):
            parts = [int(p) for p in text.split(":")]
            seconds = float(sum(p * u for p, u in zip(reversed(parts), (1, 60, 3600, 86400))))
        elif re.fullmatch(r"(?:\s*\d+(?:\.\d+)?\s*[dhms])+\s*", text):
            seconds = sum(float(n) * _UNITS[u] for n, u in _HUMAN.findall(text))
        else:
            raise ValueError(f"budget must be a duration such as 15m, 1h30m, 90s or 00:00:15:00, got {value!r}")
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"budget must not be negative, got {value!r}")
    return dt.timedelta(seconds=seconds) if seconds > 0 else None
