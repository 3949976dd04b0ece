"""Run the data-processing use case end to end, offline: make a CSV of 200 records,
start the local rate-limited API, and `everruns run` the agent on it in this process.

    PYTHONPATH=examples .venv/bin/python -m data_processing.run [--records 200] [--db PATH]

Prints the API's statistics at the end (requests, 429s, 503s, records processed twice).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from data_processing.api import REGIONS, EnrichAPI

SPEC = Path(__file__).resolve().parents[1] / "agents" / "data-processing.yaml"


def make_records(path: Path, count: int) -> Path:
    cities = sorted(REGIONS)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "name", "city"])
        for i in range(count):
            writer.writerow([i + 1, f"customer-{i + 1:04d}", cities[i % len(cities)]])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--db", default=None, help="database (default: a temporary SQLite file)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="everruns-data-"))
    records = make_records(tmp / "records.csv", args.records)
    api = EnrichAPI()
    threading.Thread(target=api.serve_forever, daemon=True).start()
    env = {**os.environ, "DATAPROC_API": api.url}
    env.setdefault("EVERRUNS_DATABASE_URL", args.db or str(tmp / "everruns.db"))
    command = [sys.executable, "-m", "everruns.cli", "run", str(SPEC), "-i", "Enrich records.csv"]
    code = subprocess.call([*command, "--file", str(records)], env=env)
    print("API:", api.summary())
    raise SystemExit(code)


if __name__ == "__main__":
    main()
