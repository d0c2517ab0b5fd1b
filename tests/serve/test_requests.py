"""The request path (JSON → numpy, per request) gives exactly the batch path's model inputs (table →
pandas → Preprocessor, as in training), and every client mistake gets a 4xx naming series and field."""

from __future__ import annotations

import copy

import numpy as np
import orjson
import pandas as pd
import pytest

from fusioncast.batch.score import table_windows
from fusioncast.data.frame import prepare_frame
from fusioncast.data.grid import CALENDAR_FEATURES
from fusioncast.data.preprocess import Preprocessor
from fusioncast.data.schema import Schema, validate
from fusioncast.data.synthetic import make_taxi_demand
from fusioncast.serve.calendar import calendar_values
from fusioncast.serve.requests import RequestError, RequestParser, series_payload
from tests.conftest import needs_shared
from tests.serve.cases import CASES, bodies, random_bodies

SYNTH = Schema(
    time_col="timestamp", target="pickups", group_ids=["zone"], static_categoricals=["zone", "borough"],
    static_reals=["population"], time_varying_known_categoricals=["holiday"],
    time_varying_known_reals=["fare_multiplier"], time_varying_unknown_categoricals=["weather"],
    time_varying_unknown_reals=["temperature"], calendar=["hour", "day_of_week", "week_of_year"], freq="h",
    max_encoder_length=24, max_prediction_length=6,
)
STALLION = Schema(
    time_col="date", target="volume", group_ids=["agency", "sku"], static_categoricals=["agency", "sku"],
    static_reals=["avg_population_2017", "avg_yearly_household_income_2017"],
    time_varying_known_categoricals=["easter_day", "good_friday", "new_year", "christmas", "labor_day",
                                     "independence_day", "revolution_day_memorial", "regional_games",
                                     "fifa_u_17_world_cup", "football_gold_cup", "beer_capital", "music_fest"],
    time_varying_known_reals=["price_regular", "price_actual", "discount", "discount_in_percent"],
    time_varying_unknown_reals=["industry_volume", "soda_volume", "avg_max_temp"], calendar=["month"], freq="MS",
    max_encoder_length=36, max_prediction_length=6,
)


def fitted(df: pd.DataFrame, schema: Schema, fit_before) -> Preprocessor:
    frame, freq = prepare_frame(df, schema)
    return Preprocessor(schema, freq).fit(frame, (frame[schema.time_col] < pd.Timestamp(fit_before)).to_numpy())


def forecast_table(df: pd.DataFrame, schema: Schema, origin) -> pd.DataFrame:
    """The table up to `origin` plus H future rows whose target is empty."""
    H = schema.max_prediction_length
    end = pd.Timestamp(origin) + pd.tseries.frequencies.to_offset(schema.freq) * H
    out = df[df[schema.time_col] < end].copy()
    out.loc[out[schema.time_col] >= pd.Timestamp(origin), schema.target] = np.nan
    return out


def requests_for(table: pd.DataFrame, schema: Schema, history: int) -> list[dict]:
    """One request series per series of the table: its last `history` steps and H future rows."""
    H = schema.max_prediction_length
    v = validate(table, schema)
    return [series_payload(g.iloc[-(history + H):], schema, H) for _, g in v.groupby(schema.group_ids, sort=False)]


def assert_same_inputs(parsed, windows, keys: list[str]):
    order = [windows.keys.index(k) for k in keys]
    for name, got in parsed.inputs.items():
        want = windows.inputs[name][order]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    want_times = [list(np.datetime_as_string(t, unit="s")) for t in windows.times[order]]
    assert parsed.times == want_times


@pytest.fixture(scope="module")
def synthetic():
    df = make_taxi_demand(n_zones=4, days=14)
    return df, fitted(df, SYNTH, "2024-01-10")


def test_calendar_features_match_training(synthetic):
    t = pd.date_range("1969-12-25", "2031-01-03", freq="17h").as_unit("ns")
    for name, feature in CALENDAR_FEATURES.items():
        np.testing.assert_array_equal(calendar_values(name, t.asi8), np.asarray(feature(t)).astype(np.int64), name)


def test_request_path_equals_table_path_synthetic(synthetic):
    df, pp = synthetic
    df = df.copy()
    # what the request path must handle like the table path: an unseen series with an unknown
    # borough, an unknown weather value, missing observations, and a series with a short history
    new = df[df.zone == "zone_001"].assign(zone="zone_new", borough="Atlantis")
    df = pd.concat([df, new], ignore_index=True)
    t = df.timestamp
    df.loc[(df.zone == "zone_002") & t.between("2024-01-12 20:00", "2024-01-12 23:00"), "pickups"] = np.nan
    df.loc[(df.zone == "zone_000") & (t == "2024-01-13 01:00"), "weather"] = "hail"
    table = forecast_table(df, SYNTH, "2024-01-13 05:00")
    short = table[(table.zone != "zone_003") | (table.timestamp >= "2024-01-12 20:00")]  # 9 history steps < L
    windows = table_windows(short, pp)
    parser = RequestParser(pp)
    series = requests_for(short, SYNTH, history=SYNTH.max_encoder_length)
    parsed = parser.parse(orjson.dumps({"series": series}))
    assert_same_inputs(parsed, windows, [s["id"] for s in series])
    assert parsed.inputs["encoder_mask"][[s["id"] for s in series].index("zone_003")].sum() == 9
    warnings = " ".join(w for ws in parsed.warnings for w in ws)
    assert "'hail'" in warnings and "'Atlantis'" in warnings and "zone_new" in warnings and "padded" in warnings
    # a longer history than the encoder changes nothing: only the last L steps are read
    longer = parser.parse(orjson.dumps({"series": requests_for(short, SYNTH, history=60)}))
    for name in parsed.inputs:
        np.testing.assert_array_equal(longer.inputs[name], parsed.inputs[name])


def test_request_path_equals_table_path_stallion():
    df = pd.read_parquet(needs_shared("stallion.parquet"))
    keys = df[["agency", "sku"]].drop_duplicates().iloc[::9]  # 39 of the 350 series keep it quick
    df = df.merge(keys, on=["agency", "sku"])
    pp = fitted(df, STALLION, "2017-01-01")
    table = forecast_table(df, STALLION, "2017-06-01")
    windows = table_windows(table, pp)
    series = requests_for(table, STALLION, history=STALLION.max_encoder_length)
    parser = RequestParser(pp)
    parsed = parser.parse(orjson.dumps({"series": series}))
    assert len(parsed.ids) == len(keys)
    assert_same_inputs(parsed, windows, ["|".join(s["id"].values()) for s in series])
    assert not any(parsed.warnings)
    # flags sent as JSON integers (as clients do) are the same categories as the table's
    as_ints = copy.deepcopy(series)
    for s in as_ints:
        for part in ("history", "future"):
            for c in STALLION.time_varying_known_categoricals:
                s[part][c] = [int(v) for v in s[part][c]]
        s["id"] = "|".join(s["id"].values())  # the id may also be the joined key
    again = parser.parse(orjson.dumps({"series": as_ints}))
    for name in parsed.inputs:
        np.testing.assert_array_equal(again.inputs[name], parsed.inputs[name])


@pytest.fixture(scope="module")
def synthetic_request(synthetic):
    df, pp = synthetic
    table = forecast_table(df, SYNTH, "2024-01-12 07:00")
    return {"series": requests_for(table, SYNTH, SYNTH.max_encoder_length)[:2]}


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_client_mistakes_are_named(synthetic, synthetic_request, case):
    _, pp = synthetic
    name, body, status, field = next(c for c in bodies(synthetic_request, SYNTH) if c[0] == case)
    with pytest.raises(RequestError) as e:
        RequestParser(pp).parse(body)
    assert e.value.status == status, str(e.value)
    if field:
        assert e.value.field == field and field in str(e.value)
    if status == 422 and case not in ("no series", "empty series", "unknown top-level field",
                                      "interpretation not a bool"):
        assert e.value.series is not None and "series" in str(e.value)


def test_random_mutations_get_a_4xx_or_finite_model_inputs(synthetic, synthetic_request):
    _, pp = synthetic
    parser, answered = RequestParser(pp), {200: 0, 400: 0, 422: 0}
    for body in random_bodies(synthetic_request, 1500, seed=0):
        try:
            parsed = parser.parse(body)
        except RequestError as e:  # anything else escaping the parser would be a bug (the server's 422 fallback)
            assert e.status in (400, 413, 422) and str(e), body[:300]
            answered[e.status] += 1
            continue
        answered[200] += 1
        n = len(orjson.loads(body)["series"])
        assert len(parsed.ids) == len(parsed.times) == len(parsed.warnings) == n
        for name, a in parsed.inputs.items():
            assert len(a) == n and (a.dtype.kind != "f" or np.isfinite(a).all()), (name, body[:300])
    assert min(answered.values()) > 50, answered  # the fuzz reaches every kind of answer


def test_static_and_id_mistakes(synthetic, synthetic_request):
    _, pp = synthetic
    parser = RequestParser(pp, max_series=3)

    def parse(edit):
        req = copy.deepcopy(synthetic_request)
        edit(req["series"][0])
        return parser.parse(orjson.dumps(req))

    for edit, field in [
        (lambda s: s.pop("id"), "id"),
        (lambda s: s.update(id={"region": "x"}), "id"),
        (lambda s: s["static"].pop("population"), "static.population"),
        (lambda s: s["static"].update(bogus=1), "static.bogus"),
        (lambda s: s["static"].update(population="many"), "static.population"),
        (lambda s: s["static"].update(zone="zone_009"), "static.zone"),  # contradicts the id
    ]:
        with pytest.raises(RequestError) as e:
            parse(edit)
        assert e.value.status == 422 and e.value.field == field, str(e.value)
    with pytest.raises(RequestError) as e:
        parser.parse(orjson.dumps({"series": synthetic_request["series"] * 2}))
    assert e.value.status == 413
    # the time column of `future` is optional; other known inputs are not
    assert parse(lambda s: s["future"].pop("timestamp")).times == parser.parse(orjson.dumps(synthetic_request)).times
    with pytest.raises(RequestError, match="future.fare_multiplier is missing"):
        parse(lambda s: s["future"].pop("fare_multiplier"))


def test_client_strings_come_back_bounded(synthetic, synthetic_request):
    """A 1 MB category name, field name or id is named in a warning or an error, never echoed whole."""
    _, pp = synthetic
    parser, huge = RequestParser(pp), "x" * 1_000_000

    def edited(edit) -> bytes:
        req = copy.deepcopy(synthetic_request)
        edit(req["series"][0])
        return orjson.dumps(req)

    answer = parser.parse(edited(lambda s: s["history"]["weather"].__setitem__(-1, huge)))
    (warning,) = [w for w in answer.warnings[0] if "weather" in w]
    assert "not seen in training" in warning and "1000002 characters" in warning and len(warning) < 300
    for edit, field in [(lambda s: s["history"].update({huge: s["history"]["pickups"]}), "history."),
                        (lambda s: s.update({huge: 1}), ""),
                        (lambda s: s["history"]["timestamp"].__setitem__(3, huge), "history.timestamp"),
                        (lambda s: s["static"].update(zone=huge), "static.zone"),
                        (lambda s: s.update(id={huge: 1}), "id")]:
        with pytest.raises(RequestError) as e:
            parser.parse(edited(edit))
        body = orjson.dumps(e.value.body())
        assert e.value.status == 422 and len(body) < 1500, (field, len(body))
        assert e.value.field.startswith(field) or field == "", e.value.field
