"""`tidal climate synth` and `tidal climate stats`: files written, errors as one line and a
non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import xarray as xr
from typer.testing import CliRunner

from tidal.cli import app

runner = CliRunner()


def test_synth_writes_the_field_and_its_statistics(tmp_path: Path) -> None:
    out = tmp_path / "t.nc"
    result = runner.invoke(app, ["climate", "synth", str(out), "--size", "100kB", "--lat", "8", "--lon", "16"])
    assert result.exit_code == 0, result.output
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert ds["t2m"].shape == (195, 8, 16)
    stats = json.loads((tmp_path / "t.nc.stats.json").read_text())
    assert stats["train_steps"] == 195 - 16 and set(stats["variables"]) == {"t2m"}
    # stats recomputes for another validation length.
    result = runner.invoke(app, ["climate", "stats", str(out), "--val-steps", "40"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t.nc.stats.json").read_text())["train_steps"] == 195 - 40


def test_zarr_output(tmp_path: Path) -> None:
    out = tmp_path / "t.zarr"
    result = runner.invoke(app, ["climate", "synth", str(out), "--steps", "20", "--lat", "4", "--lon", "8"])
    assert result.exit_code == 0, result.output
    assert xr.open_dataset(out, engine="zarr")["t2m"].shape == (20, 4, 8)


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for args in (
        ["climate", "synth", str(tmp_path / "x.nc")],
        ["climate", "synth", str(tmp_path / "x.nc"), "--size", "lots"],
        ["climate", "synth", str(tmp_path / "x.nc"), "--steps", "10", "--val-steps", "10"],
        ["climate", "stats", str(tmp_path / "missing.nc")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output


def test_synth_makes_the_output_folder_or_says_why_it_cannot(tmp_path: Path) -> None:
    out = tmp_path / "new" / "folder" / "t.nc"
    result = runner.invoke(app, ["climate", "synth", str(out), "--steps", "20", "--lat", "4", "--lon", "8"])
    assert result.exit_code == 0, result.output
    assert out.exists() and (out.parent / "t.nc.stats.json").exists()
    # Under a regular file no folder can be made: one line naming OUT, exit 2, no traceback.
    (tmp_path / "a-file").write_text("")
    result = runner.invoke(app, ["climate", "synth", str(tmp_path / "a-file" / "t.nc"), "--steps", "20"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "OUT" in lines[0] and "a-file" in lines[0], result.output
