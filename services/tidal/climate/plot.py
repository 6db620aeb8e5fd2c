"""Forecast-against-truth figures, drawn with matplotlib's Agg backend (files only)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from tidal.core.data_types import Dataset

DPI = 110


@torch.no_grad()
def grid_forecast_figure(
    model: nn.Module,
    data: Dataset,
    lat: np.ndarray,
    lon: np.ndarray,
    mean: float,
    std: float,
    halo: int,
    title: str,
    sample: int = -1,
) -> Figure:
    """Truth, forecast and the errors of the forecast and of persistence for one held-out
    step, in kelvin (first variable)."""
    model.eval()
    x = data.val_x[sample : sample + 1 if sample != -1 else None]
    cols = slice(halo, x.shape[-1] - halo) if halo else slice(None)
    truth = (data.val_y[sample, 0, :, cols] * std + mean).numpy()
    forecast = (model(x)[0, 0, :, cols] * std + mean).numpy()
    persistence = (x[0, -1, 0, :, cols] * std + mean).numpy()
    weight = np.cos(np.deg2rad(lat))[:, None]

    def rmse(field: np.ndarray) -> float:
        return float(np.sqrt(((field - truth) ** 2 * weight).sum() / (weight.sum() * truth.shape[1])))

    fig = Figure(figsize=(12, 6.5), layout="constrained")
    axes = fig.subplots(2, 2)
    extent = (float(lon.min()), float(lon.max()), float(lat.min()), float(lat.max()))
    lo, hi = float(truth.min()), float(truth.max())
    err = max(float(np.abs(persistence - truth).max()), 1e-6)
    p_title = f"persistence - truth (K), RMSE {rmse(persistence):.3f}"
    f_title = f"forecast - truth (K), RMSE {rmse(forecast):.3f}"
    panels = (
        (axes[0, 0], truth, "truth (K)", "coolwarm", lo, hi),
        (axes[0, 1], forecast, "forecast (K)", "coolwarm", lo, hi),
        (axes[1, 0], persistence - truth, p_title, "RdBu_r", -err, err),
        (axes[1, 1], forecast - truth, f_title, "RdBu_r", -err, err),
    )
    for ax, field, name, cmap, vmin, vmax in panels:
        image = ax.imshow(field, extent=extent, origin="upper" if lat[0] > lat[-1] else "lower", cmap=cmap,
                          vmin=vmin, vmax=vmax, aspect="auto")  # fmt: skip
        ax.set_title(name)
        ax.set_xlabel("longitude (deg E)")
        ax.set_ylabel("latitude (deg N)")
        fig.colorbar(image, ax=ax, shrink=0.85)
    fig.suptitle(title)
    return fig


@torch.no_grad()
def station_forecast_figure(model: nn.Module, data: Dataset, title: str, first: int, count: int) -> Figure:
    """Truth, forecast and persistence over `count` consecutive held-out samples (normalised)."""
    model.eval()
    x = data.val_x[first : first + count]
    truth = data.val_y[first : first + count, 0].numpy()
    forecast = model(x)[:, 0].numpy()
    persistence = x[:, 0].numpy()
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax = fig.add_subplot()
    steps = np.arange(len(truth))
    ax.plot(steps, truth, label="truth", color="black", linewidth=2)
    ax.plot(steps, forecast, label="forecast", color="tab:blue")
    ax.plot(steps, persistence, label="persistence", color="tab:orange", linestyle="--")
    ax.set_xlabel("held-out sample (one per record step)")
    ax.set_ylabel("normalised value")
    ax.legend()
    ax.set_title(title)
    return fig


def save(fig: Figure, path: Path) -> Path:
    matplotlib.use("Agg")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
