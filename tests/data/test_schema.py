"""Bad tables get clear errors naming the column or series; short series are skipped with a warning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fusioncast.data.frame import prepare_frame
from fusioncast.data.schema import Schema, SchemaError
from fusioncast.data.synthetic import make_taxi_demand


def schema(**kw) -> Schema:
    base = dict(time_col="timestamp", target="pickups", group_ids=["zone"], static_categoricals=["borough"],
                static_reals=["population"], time_varying_known_reals=["fare_multiplier"],
                time_varying_unknown_categoricals=["weather"], time_varying_unknown_reals=["temperature"],
                max_encoder_length=24, max_prediction_length=6)
    return Schema(**{**base, **kw})


@pytest.fixture
def table() -> pd.DataFrame:
    return make_taxi_demand(n_zones=3, days=5)


def test_missing_column_is_named(table):
    with pytest.raises(SchemaError, match=r"'temperature' \(time_varying_unknown_reals\) not found"):
        prepare_frame(table.drop(columns="temperature"), schema())


def test_non_numeric_real_is_named(table):
    table["fare_multiplier"] = table["fare_multiplier"].astype(object)
    table.loc[7, "fare_multiplier"] = "cheap"
    with pytest.raises(SchemaError, match=r"'fare_multiplier' \(time_varying_known_reals\) must be numeric.*'cheap' at row 7"):
        prepare_frame(table, schema())


def test_non_numeric_target_is_named(table):
    table["pickups"] = table["pickups"].astype(str)
    table.loc[3, "pickups"] = "n/a"
    with pytest.raises(SchemaError, match=r"'pickups' \(target\) must be numeric"):
        prepare_frame(table, schema())


def test_unparseable_time_is_named(table):
    table["timestamp"] = table["timestamp"].astype(str)
    table.loc[2, "timestamp"] = "not a date"
    with pytest.raises(SchemaError, match="'timestamp' .*cannot be parsed"):
        prepare_frame(table, schema())


def test_duplicate_rows_are_reported(table):
    dup = pd.concat([table, table.iloc[[5]]], ignore_index=True)
    with pytest.raises(SchemaError, match=r"2 rows share a \(series, timestamp\) pair.*zone_000"):
        prepare_frame(dup, schema())


def test_static_that_varies_is_named(table):
    table.loc[10, "population"] = 1.0
    with pytest.raises(SchemaError, match="static column 'population' varies within series"):
        prepare_frame(table, schema())


def test_off_grid_timestamp_names_series(table):
    table.loc[table.index[-1], "timestamp"] += pd.Timedelta("17min")
    with pytest.raises(SchemaError, match=r"series zone=zone_002: timestamp .* not on the 'h' grid"):
        prepare_frame(table, schema(freq="h"))


def test_short_series_skipped_with_count(table):
    short = table[~((table.zone == "zone_001") & (table.timestamp > table.timestamp.min() + pd.Timedelta("20h")))]
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 series shorter than .* = 30 steps"):
        frame, _ = prepare_frame(short, schema())
    assert sorted(frame.zone.unique()) == ["zone_000", "zone_002"]


def test_all_series_short_is_an_error(table):
    with pytest.raises(SchemaError, match="every series is shorter"):
        prepare_frame(table, schema(max_encoder_length=200))


def test_gaps_are_filled_and_masked(table):
    holes = table.drop(index=[20, 21, 22]).reset_index(drop=True)
    frame, freq = prepare_frame(holes, schema())
    assert freq == "h" and len(frame) == len(table)
    z0 = frame[frame.zone == "zone_000"].reset_index(drop=True)
    assert not z0["_observed"][20:23].any() and z0["_observed"].drop(index=[20, 21, 22]).all()
    assert np.isnan(z0["pickups"][20:23]).all()
    # covariates are carried forward into the gap, never zero
    assert (z0["fare_multiplier"][20:23] == z0["fare_multiplier"][19]).all()


def test_nan_targets_are_masked_not_zero(table):
    table.loc[4, "pickups"] = np.nan
    frame, _ = prepare_frame(table, schema())
    assert not frame["_observed"][4] and frame["_observed"].sum() == len(frame) - 1


def test_calendar_features_by_name(table):
    frame, _ = prepare_frame(table, schema(calendar=["hour", "day_of_week"]))
    assert frame["hour"].iloc[:24].tolist() == [str(h) for h in range(24)]
    with pytest.raises(SchemaError, match="unknown calendar feature"):
        prepare_frame(table, schema(calendar=["fortnight"]))


def test_us_holiday_flags_the_observed_federal_holidays():
    from fusioncast.data.grid import add_calendar

    t = pd.date_range("2014-07-03 20:00", "2015-07-04 03:00", freq="h")  # starts on the eve of July 4
    df = add_calendar(pd.DataFrame({"time": t}), "time", ["us_holiday"])
    days = sorted(set(df.loc[df["us_holiday"] == "1", "time"].dt.strftime("%m-%d %a")))
    # 2015-07-04 is a Saturday: observed on Friday 07-03; every hour of a holiday is flagged
    assert days == ["01-01 Thu", "01-19 Mon", "02-16 Mon", "05-25 Mon", "07-03 Fri", "07-04 Fri", "09-01 Mon",
                    "10-13 Mon", "11-11 Tue", "11-27 Thu", "12-25 Thu"]
    assert (df["us_holiday"] == "1").sum() == 11 * 24


@pytest.mark.parametrize("freq,period", [("30min", 48), ("h", 24), ("15min", 96), ("D", 7), ("W", 52), ("MS", 12), ("QS", 4)])
def test_seasonal_period_of_frequency(freq, period):
    from fusioncast.data.frame import seasonal_period

    assert seasonal_period(freq) == period
