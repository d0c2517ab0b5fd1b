"""Level-shift augmentation of training windows: the target scaled by a random factor from a random
step near the end of the encoder through the whole horizon.

A series trained on months without holidays, storms or outages never sees its level leave the
usual pattern, so the model learns to trust the weekly and daily shape over what the last hours
say. Shifted windows teach it that a departure seen at the end of the encoder goes on into the
horizon. Only the target moves (known inputs and other observed reals stay), and only in training
batches. The factor multiplies raw target values, so it suits positive-valued targets (counts, load,
sales). The shifts are drawn per window from the loader's per-epoch generator, so a seeded fit is
repeatable and DDP ranks shift each window as one process would. Written by hand: neither Lightning
nor pytorch-forecasting augments windows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def _is(value, kinds) -> bool:
    """isinstance, with booleans refused (YAML's true is an int to Python)."""
    return isinstance(value, kinds) and not isinstance(value, bool)


@dataclass(frozen=True)
class LevelShift:
    """`prob`: share of windows shifted; `sigma`: std of the log factor (0.15: most factors within
    0.74-1.35); `span`: the shift starts in the encoder's last `span` steps (at least the last one; a span longer
    than the encoder is cut to it)."""

    prob: float = 0.0
    sigma: float = 0.15
    span: int = 24

    @classmethod
    def from_config(cls, cfg: dict | None, max_encoder_length: int) -> LevelShift | None:
        """None when off (no config or prob 0); errors name the `data.level_shift` key at fault."""
        if not cfg:
            return None
        unknown = set(cfg) - {"prob", "sigma", "span"}
        if unknown:
            raise ValueError(f"data.level_shift has unknown keys {sorted(unknown)}; expected prob, sigma, span")
        shift = cls(**cfg)
        if not _is(shift.prob, (int, float)) or not 0.0 <= shift.prob <= 1.0:
            raise ValueError(f"data.level_shift.prob must be a number in [0, 1], got {shift.prob!r}")
        if shift.prob == 0:
            return None
        if not _is(shift.sigma, (int, float)) or not shift.sigma > 0.0:
            raise ValueError(f"data.level_shift.sigma must be a number > 0, got {shift.sigma!r}")
        if not _is(shift.span, int) or not shift.span >= 1:
            raise ValueError(f"data.level_shift.span must be an integer >= 1, got {shift.span!r}")
        if shift.span > max_encoder_length:
            # "up to `span` steps back" cannot reach before the encoder; clamping (not refusing) keeps a
            # sweep over data.max_encoder_length from failing on its short encoders
            log.warning("data.level_shift.span=%d is longer than the encoder (%d steps): shifts start anywhere in it",
                        shift.span, max_encoder_length)
            shift = replace(shift, span=max_encoder_length)
        return shift

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Per window of a loader: its factor (1 if not shifted) and how many steps before the encoder's
        last one its shift starts. Drawn per window, not per batch, so DDP ranks that draw the same
        stream give each window the shift a single process would."""
        on = torch.rand(n, generator=generator) < self.prob
        factor = torch.where(on, torch.exp(torch.randn(n, generator=generator) * self.sigma), torch.ones(n))
        back = torch.randint(0, self.span, (n,), generator=generator)
        return factor, back

    @staticmethod
    def factors(factor: Tensor, back: Tensor, L: int, H: int) -> Tensor:
        """(B, L + H) multipliers of the B windows' target steps: 1 before each one's shift, its factor after."""
        after = torch.arange(L + H, device=factor.device)[None] >= (L - 1 - back)[:, None]
        return torch.where(after, factor[:, None], torch.ones((), device=factor.device))
