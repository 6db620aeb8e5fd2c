"""Writes the bring-your-own example's data: a weather CSV (station-days -> rain tomorrow).

    python examples/byo/make_data.py [FOLDER]     # default: examples/byo/data/ (git-ignored)

4 stations x 3 years x 365 days = 4,380 rows, seeded (--seed), so every run writes the same file.
Columns: the features of byo_user/weather.py, `year` (2025 validates) and `rain_tomorrow` (0/1).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from byo_user.weather import simulate  # the script's folder is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
FILE_NAME = "weather.csv"


def write_csv(folder: Path, seed: int = 0) -> Path:
    """Writes `folder/weather.csv` and returns its path."""
    columns = simulate(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAME
    rows = zip(*(values.tolist() for values in columns.values()), strict=True)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=HERE / "data", help="where to write weather.csv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = write_csv(args.folder, args.seed)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
