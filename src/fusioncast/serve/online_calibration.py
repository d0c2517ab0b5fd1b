"""Online calibration in the server, for bundles trained with calibration=adaptive: each series' offsets
and width factors are tracked from the actuals posted to it, with the very steps of
Calibration.track (fusioncast/postfit/calibration.py: start_tracking, observe, tracked, finish), so that the
served intervals follow recent errors as evaluation and `replay` make them follow.

The state of a series lives in the store with the time of the last actual it has learned from; the
actuals after it are learned, in time order, when they are posted. An actual of time t teaches every
issued window that forecast t (step h of the window starting h steps before t); a forecast issued
after its actuals were learned teaches nothing, and an actual posted after a later one was learned
is kept for monitoring but not learned.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import orjson

from fusioncast.postfit.calibration import Calibration, TrackState
from fusioncast.serve.history import forecast_times, steps_back
from fusioncast.serve.store import Store

NEVER = -(2**63)


def dumps_state(state: TrackState) -> bytes:
    return orjson.dumps({"offsets": state.offsets, "log_width": state.log_width}, option=orjson.OPT_SERIALIZE_NUMPY)


def loads_state(blob: bytes) -> TrackState:
    d = orjson.loads(blob)
    return TrackState(np.asarray(d["offsets"], np.float64), np.asarray(d["log_width"], np.float64))


class OnlineCalibration:
    def __init__(self, calibration: Calibration, parser):
        self.calibration, self.parser, self.H = calibration, parser, parser.H

    def state(self, saved: tuple[int, bytes] | None) -> TrackState:
        return loads_state(saved[1]) if saved is not None else self.calibration.start_tracking(self.H)

    def serve(self, base: np.ndarray, scale: float, state: TrackState) -> np.ndarray:
        """One window's served quantiles (H, Q) from its calibrated forecast `base` under `state`."""
        center, dist = self.calibration.split(base)
        return self.calibration.finish(self.calibration.tracked(state, center, dist, scale)).astype(base.dtype)

    def advance(self, store: Store, series: str) -> None:
        """Learn the series' actuals posted since its state was saved (blocking: run in a thread)."""
        saved = store.trackers([series]).get(series)
        until = saved[0] if saved is not None else NEVER
        actuals = store.actuals([series], until + 1 if until != NEVER else NEVER)
        if not actuals:
            return
        state = self.state(saved)
        covering = defaultdict(list)  # time -> [(h, center (1,), dist (Q,), scale)] of the windows that forecast it
        for _, t0, record in store.forecasts([series], steps_back(self.parser, actuals[0][1], self.H)):
            r = orjson.loads(record)
            base = np.asarray(r["base"], np.float32)
            center, dist = self.calibration.split(base)
            for h, t in enumerate(forecast_times(self.parser, t0).tolist()):
                covering[t].append((h, center[h], dist[h], r["scale"]))
        for _, t, value, _ in actuals:
            windows = sorted(covering.get(t, []), key=lambda w: w[0])
            if windows:
                h = np.array([w[0] for w in windows])
                self.calibration.observe(state, np.stack([w[1] for w in windows]), np.stack([w[2] for w in windows]),
                                         np.array([w[3] for w in windows], np.float64),
                                         np.full(len(h), value, np.float64), h)
            until = t
        store.put_tracker(series, until, dumps_state(state))
