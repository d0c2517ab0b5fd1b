"""Hydra sweep overrides (`choice`, `range`, `interval`, `tag(log|int, ...)`) as Optuna distributions.

Hydra's override parser reads the expressions and Optuna's distributions hold the space; this module only
maps one onto the other (no maintained library does, since hydra-optuna-sweeper pins optuna<3).
"""

from __future__ import annotations

from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)


def _choices(override: Override) -> list:
    choices = list(override.sweep_iterator(transformer=Transformer.encode))
    for c in choices:
        if not isinstance(c, (str, int, float, bool, type(None))):
            raise ValueError(f"{override.input_line}: a choice must be a str, int, float, bool or null, got {c!r}")
    return choices


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override."""
    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(_choices(override))
    if isinstance(value, RangeSweep):  # end-exclusive like Python's range: the last value is the high end
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"{override.input_line}: the range is empty")
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(values[0], values[-1], step=value.step)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if "int" in value.tags:
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(f"{key}: sweep '{override.input_line}' is not supported (use choice, range or interval)")


def parse(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """(search space, fixed overrides) from `key=value` strings; a later entry for a key replaces an earlier one,
    so the command line narrows or fixes what the config's `params` declare."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for o in OverridesParser.create().parse_overrides(arguments):
        key = o.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if o.is_sweep_override():
            space[key] = distribution(o)
        else:
            fixed[key] = o.get_value_element_as_str()
    return space, fixed


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Draw one parameter through the public suggest API (the sampler sees the same distribution)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"{name}: unsupported distribution {dist!r}")


def grid(space: dict[str, BaseDistribution]) -> dict[str, list]:
    """The values of each parameter, for optuna.samplers.GridSampler (discrete distributions only)."""
    out = {}
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            out[name] = list(d.choices)
        elif isinstance(d, IntDistribution) and not d.log:
            out[name] = list(range(d.low, d.high + 1, d.step))
        elif isinstance(d, FloatDistribution) and d.step is not None:
            n = int(round((d.high - d.low) / d.step))
            out[name] = [d.low + i * d.step for i in range(n + 1)]
        else:
            raise ValueError(f"{name}: the grid sampler needs choice() or range() values, not {d!r}")
    return out
