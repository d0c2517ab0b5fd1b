"""A generated taxi-demand table: the zero-setup default data set.

Hourly pickups for many zones with every one of the six input kinds, so that a demo exercises the
whole model: zone and borough (static categoricals), population (static real), holiday flag (known
categorical), a posted fare multiplier (known real), weather condition (observed categorical) and
temperature (observed real). Demand has daily and weekly seasonality, a holiday dip, a fare
elasticity, a rain bump and negative-binomial noise, so a model that uses the covariates beats a
seasonal-naive forecast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BOROUGHS = ["Manhattan", "Brooklyn", "Queens", "Bronx"]
HOLIDAYS = ["2024-01-01", "2024-01-15", "2024-02-19", "2024-05-27", "2024-07-04", "2024-09-02",
            "2024-11-28", "2024-12-25"]


def _daily_profile(hours: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """Commute peaks on weekdays, a late-evening peak on weekends."""
    morning = np.exp(-0.5 * ((hours - 8.5) / 1.5) ** 2)
    evening = np.exp(-0.5 * ((hours - 18.0) / 2.0) ** 2)
    night = np.exp(-0.5 * ((hours - 23.0) / 2.5) ** 2)
    weekday = 0.25 + 1.0 * morning + 1.1 * evening + 0.3 * night
    weekend_shape = 0.35 + 0.4 * evening + 0.9 * night + 0.5 * np.exp(-0.5 * ((hours - 13) / 3) ** 2)
    return np.where(weekend, weekend_shape, weekday)


def make_taxi_demand(n_zones: int = 12, days: int = 56, start: str = "2024-01-01", seed: int = 0) -> pd.DataFrame:
    """Hourly pickups per zone: columns zone, borough, population, timestamp, holiday, fare_multiplier,
    weather, temperature, pickups."""
    rng = np.random.default_rng(seed)
    t = pd.date_range(start, periods=days * 24, freq="h")
    hours, dow = t.hour.to_numpy(), t.dayofweek.to_numpy()
    holiday = np.isin(t.normalize(), pd.to_datetime(HOLIDAYS))
    weekend = (dow >= 5) | holiday
    profile = _daily_profile(hours, weekend)

    # one weather process for the city: temperature with a daily cycle, rain/snow spells
    doy = t.dayofyear.to_numpy()
    temperature = 5 + 10 * np.sin(2 * np.pi * (doy - 100) / 365) + 4 * np.sin(2 * np.pi * (hours - 9) / 24)
    temperature = temperature + np.cumsum(rng.normal(0, 0.4, len(t))) * 0.3
    wet = np.convolve(rng.random(len(t)) < 0.03, np.ones(6), mode="same") > 0
    weather = np.where(wet, np.where(temperature < 1, "snow", "rain"), "clear")

    frames = []
    for z in range(n_zones):
        borough = BOROUGHS[z % len(BOROUGHS)]
        population = float(rng.integers(20_000, 250_000))
        level = population / 2_000 * (1.6 if borough == "Manhattan" else 1.0)
        # fares are posted ahead (known): surge at peaks plus zone promotions
        fare = 1.0 + 0.25 * profile / profile.max() + 0.2 * (rng.random(len(t)) < 0.05)
        fare = np.round(fare, 2)
        mean = level * profile * np.where(holiday, 0.6, 1.0) * fare ** -1.5
        mean = mean * np.where(weather == "rain", 1.3, np.where(weather == "snow", 0.7, 1.0))
        mean = mean * (1 + 0.01 * (temperature - 10))
        pickups = rng.negative_binomial(20, 20 / (20 + np.maximum(mean, 0.1)))
        frames.append(pd.DataFrame({
            "zone": f"zone_{z:03d}",
            "borough": borough,
            "population": population,
            "timestamp": t,
            "holiday": holiday.astype(int).astype(str),
            "fare_multiplier": fare,
            "weather": weather,
            "temperature": np.round(temperature, 1),
            "pickups": pickups.astype(float),
        }))
    return pd.concat(frames, ignore_index=True)
