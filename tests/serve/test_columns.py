"""The column-at-once path (serve/columns.py) answers exactly as the per-series path: the same inputs,
times and warnings per series, and for mistakes anywhere in a request, the same error."""

from __future__ import annotations

import copy

import numpy as np
import orjson
import pytest

from fusioncast.data.synthetic import make_taxi_demand
from fusioncast.serve import columns
from fusioncast.serve.requests import RequestError, RequestParser
from tests.serve.cases import CASES, bodies
from tests.serve.test_requests import SYNTH, fitted, forecast_table, requests_for


@pytest.fixture(scope="module")
def setup():
    df = make_taxi_demand(n_zones=6, days=14)
    parser = RequestParser(fitted(df, SYNTH, "2024-01-10"))
    table = forecast_table(df, SYNTH, "2024-01-12 07:00")
    return parser, requests_for(table, SYNTH, SYNTH.max_encoder_length)


def per_series(parser: RequestParser, series: list) -> tuple:
    return parser.each(range(len(series)), series)


def assert_same(parser: RequestParser, series: list):
    ids, inputs, times, warns = per_series(parser, series)
    parsed = parser.parse(orjson.dumps({"series": series}))
    assert parsed.ids == ids and parsed.times == times and parsed.warnings == warns
    for name, want in inputs.items():
        got = parsed.inputs[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    return parsed


def per_series_calls(parser: RequestParser, series: list, monkeypatch) -> list[int] | None:
    """The series columns.encode hands to the per-series path (None: all of them, the request given up)."""
    calls: list[int] = []
    with monkeypatch.context() as m:
        m.setattr(parser, "series", lambda i, s, series=parser.series: calls.append(i) or series(i, s))
        return calls if columns.encode(parser, series) is not None else None


def test_mixed_request_same_as_per_series(setup, monkeypatch):
    parser, series = setup
    assert per_series_calls(parser, series, monkeypatch) == []  # the plain request takes the fast path
    assert_same(parser, series)
    assert_same(parser, series[:1])
    s = copy.deepcopy(series)
    s[1]["history"]["weather"][-3] = "hail"          # unknown categories, in the history and in the future
    s[3]["future"]["holiday"][2] = "maybe"
    s[2]["history"]["pickups"][4:9] = [None] * 5      # missing observations
    s[4]["id"] = "zone_new"                          # an unseen series (and so an unknown zone)
    s[5]["static"]["borough"] = "Atlantis"           # an unknown static category
    s[0]["future"].pop("timestamp")                  # the future's time column is optional
    short = copy.deepcopy(series[0])                 # a short history is padded
    short["history"] = {c: v[-9:] for c, v in short["history"].items()}
    s.append(short)
    assert per_series_calls(parser, s, monkeypatch) == [1, 3, 4, 5, 6]  # fast and per-series ones merged in order
    parsed = assert_same(parser, s)
    warned = [j for j, w in enumerate(parsed.warnings) if w]
    assert warned == [1, 3, 4, 5, 6] and "'hail'" in parsed.warnings[1][0] and "'maybe'" in parsed.warnings[3][0]
    # flags as integers, as clients send them: in every series (the same codes as text), or in some
    ints = copy.deepcopy(series)
    for one in ints:
        for part in ("history", "future"):
            one[part]["holiday"] = [int(v) for v in one[part]["holiday"]]
    assert per_series_calls(parser, ints, monkeypatch) == []
    np.testing.assert_array_equal(assert_same(parser, ints).inputs["encoder_cat"],
                                  parser.parse(orjson.dumps({"series": series})).inputs["encoder_cat"])
    assert_same(parser, s[:3] + ints[3:])
    # a series without a fitted scale whose categories are all known warns on the fast path too
    pp = copy.deepcopy(parser.pp)
    pp.target_scales.pop(next(key for key in pp.target_scales if "zone_004" in key))
    unseen = RequestParser(pp)
    assert per_series_calls(unseen, series, monkeypatch) == []
    assert [bool(w) for w in assert_same(unseen, series).warnings] == [False] * 4 + [True, False]


def _error(parser: RequestParser, f) -> RequestError:
    with pytest.raises(RequestError) as e:
        f()
    return e.value


@pytest.mark.parametrize("case", [c[0] for c in CASES if not isinstance(c[1], bytes)])
def test_mistake_in_the_middle_is_named(setup, case):
    """A bad series among good ones (and after one that only warns) is named as by the per-series path."""
    parser, series = setup
    first = {"series": [copy.deepcopy(series[2])]}
    _, body, status, field = next(c for c in bodies(first, SYNTH) if c[0] == case)
    req = orjson.loads(body)
    bad = req.pop("series", None)
    good = copy.deepcopy(series)
    good[0]["history"]["weather"][-1] = "hail"
    if bad is not None:
        req["series"] = good[:2] + bad + good[3:] if bad else bad
    got = _error(parser, lambda: parser.parse(orjson.dumps(req)))
    assert got.status == status and (field is None or got.field == field)
    if req.keys() == {"series"} and req["series"]:  # not a mistake of the request as a whole
        want = _error(parser, lambda: per_series(parser, req["series"]))
        assert (str(got), got.series, got.field) == (str(want), want.series, want.field)


@pytest.mark.parametrize("cases", [("value beyond float32", "missing history column"),
                                   ("missing history column", "value beyond float32"),
                                   ("gap in the history", "null covariate"),
                                   ("target never observed", "category as an object")])
def test_first_of_two_mistakes_is_named(setup, cases):
    """Whether a mistake is found by a check over a column or by a series' shape, the first series is named."""
    parser, series = setup
    req = copy.deepcopy(series)
    for j, case in zip((1, 4), cases):
        body = next(c[1] for c in bodies({"series": [req[j]]}, SYNTH) if c[0] == case)
        req[j] = orjson.loads(body)["series"][0]
    got = _error(parser, lambda: parser.parse(orjson.dumps({"series": req})))
    want = _error(parser, lambda: per_series(parser, req))
    assert (str(got), got.series, got.field) == (str(want), want.series, want.field)
    assert got.series == req[1]["id"]
