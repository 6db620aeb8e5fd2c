"""A plausible synthetic weather record: daily observations at a few stations and whether it
rains the next day. Seeded, so every caller (make_data.py, the data factory) gets the same rows.

Each station's humidity, pressure and temperature follow a seasonal cycle plus AR(1) weather
noise; tomorrow's rain is drawn from a logistic function of today's humidity, cloud cover,
falling pressure and rain, so the label is learnable but noisy (about 0.75-0.8 accuracy at best).
"""

from __future__ import annotations

import numpy as np

FEATURES = (
    "humidity",
    "pressure_hpa",
    "pressure_change_hpa",
    "temp_max_c",
    "temp_min_c",
    "wind_kmh",
    "cloud_cover",
    "rain_mm",
    "elevation_m",
    "season_sin",
    "season_cos",
)
TARGET = "rain_tomorrow"
SPLIT = "year"  # the last year validates
FIRST_YEAR = 2023


def _ar1(rng: np.random.Generator, days: int, phi: float, scale: float) -> np.ndarray:
    """Autocorrelated day-to-day noise (weather systems last a few days)."""
    noise = rng.normal(0.0, scale, days)
    out = np.empty(days)
    out[0] = noise[0]
    for t in range(1, days):
        out[t] = phi * out[t - 1] + noise[t]
    return out


def _station(rng: np.random.Generator, years: int, elevation: float) -> dict[str, np.ndarray]:
    days = 365 * years
    doy = np.arange(days) % 365
    angle = 2 * np.pi * doy / 365
    winter = np.cos(angle)  # 1 in early January
    pressure = 1015 - elevation / 120 + _ar1(rng, days + 1, 0.8, 4.0)
    humidity = np.clip(70 + 12 * winter + _ar1(rng, days, 0.7, 6.0) - 1.5 * np.diff(pressure), 15, 100)
    temp_mean = 11 - 9 * winter - elevation / 150 + _ar1(rng, days, 0.75, 2.0)
    spread = np.clip(8 - 0.05 * (humidity - 70) + rng.normal(0, 1.5, days), 1, None)
    cloud = np.clip((humidity - 40) / 60 + rng.normal(0, 0.15, days), 0, 1)
    wind = np.abs(12 + 3 * winter - 0.8 * np.diff(pressure) + rng.normal(0, 5, days))
    # Rain today and tomorrow share one latent wetness, so today's rain is informative too.
    wet = 0.09 * (humidity - 70) + 2.2 * (cloud - 0.5) - 0.35 * np.diff(pressure) + _ar1(rng, days + 1, 0.5, 1.0)[1:]
    rain = np.where(wet > 0.8, np.round(rng.gamma(1.5, 3.0, days) * (wet - 0.8 + 0.2), 1), 0.0)
    logit_tomorrow = -0.5 + 0.45 * np.roll(wet, -1) + 0.5 * wet + 0.02 * rain
    rain_tomorrow = rng.random(days) < 1 / (1 + np.exp(-logit_tomorrow))
    return {
        "humidity": np.round(humidity, 1),
        "pressure_hpa": np.round(pressure[1:], 1),
        "pressure_change_hpa": np.round(np.diff(pressure), 1),
        "temp_max_c": np.round(temp_mean + spread / 2, 1),
        "temp_min_c": np.round(temp_mean - spread / 2, 1),
        "wind_kmh": np.round(wind, 1),
        "cloud_cover": np.round(cloud, 2),
        "rain_mm": rain,
        "elevation_m": np.full(days, elevation),
        "season_sin": np.round(np.sin(angle), 4),
        "season_cos": np.round(winter, 4),
        SPLIT: FIRST_YEAR + np.arange(days) // 365,
        TARGET: rain_tomorrow.astype(np.int64),
    }


def simulate(seed: int = 0, stations: int = 4, years: int = 3) -> dict[str, np.ndarray]:
    """Columns of `stations` x `years` x 365 rows (one per station and day), station after station."""
    if stations < 1 or years < 2:
        raise ValueError(f"stations must be >= 1 and years >= 2 (one validates), got {stations} and {years}")
    rng = np.random.default_rng(seed)
    parts = [_station(rng, years, float(rng.choice([5, 60, 240, 520]))) for _ in range(stations)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
