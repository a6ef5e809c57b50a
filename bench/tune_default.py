"""Wall time of the default tune on a machine without a GPU.

``kallos-run tune --model-name gru --asset-id BTC --end-date 2023-12-31`` with every other
setting at its default (20 trials, median pruning per epoch, and, without a GPU, the CPU
search space and at most 20 epochs per fold), on real BTC 1d candles, in a folder without a
config.json. Target: minutes, not hours (<= 10 min). For scale, one trial of the seed's full
space took 108-252 s here (issue 14), so its 20-trial default tune would take about an hour.

    .venv/bin/python bench/tune_default.py [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from _common import KALLOS_RUN, ingest_shared, median, record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()

    walls: list[float] = []
    summaries: list[dict] = []
    for run in range(args.runs):
        work = Path(tempfile.mkdtemp(prefix="kallos_bench_default_"))
        url = f"sqlite:///{work / 'kallos.db'}"
        ingest_shared(url, "BTC", "1d", "binance_klines/BTCUSDT_1d.csv")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KALLOS_", "POSTGRES_"))}
        env["KALLOS_DB_URL"] = url
        started = time.perf_counter()
        done = subprocess.run(
            [KALLOS_RUN, "tune", "--model-name", "gru", "--asset-id", "BTC",
             "--end-date", "2023-12-31"],
            check=True, cwd=work, env=env, capture_output=True, text=True,
        )  # fmt: skip
        walls.append(time.perf_counter() - started)
        summaries.append(json.loads(done.stdout))
        print(run, f"{walls[-1]:.0f} s", summaries[-1]["trial_counts"])
    last = summaries[-1]
    wall = median(walls)
    record(
        "tune_default",
        {
            "what": "default `kallos-run tune` of gru on BTC 1d (no GPU: CPU space, "
            f"{last['max_epochs']} epochs per fold, {last['n_trials']} trials, "
            f"--pruner {last['pruner']})",
            "compared_with": "issue 14: one full-space trial took 108-252 s",
            "target": "<= 10 min",
            "measured": f"{wall / 60:.1f} min ({wall:.0f} s, median of {args.runs}); "
            f"{last['trial_counts']['PRUNED']} of {last['n_trials']} trials pruned; "
            f"space {last['space']}",
            "verdict": "met" if wall <= 600 else "missed",
            "command": f"python bench/tune_default.py --runs {args.runs}",
        },
    )


if __name__ == "__main__":
    main()
