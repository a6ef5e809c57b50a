"""Tune on PostgreSQL with 2 worker processes against 1 worker, same trials, on this machine.

Target: >= 1.6x trials per hour. GRU on BTC 1d up to 2023-12-31, bench_space, max 3 epochs.

    .venv/bin/python bench/tune_workers.py [--runs 3] [--trials 8] [--max-epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import bench_space, ingest_shared, median, pg_database, record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=3)
    args = parser.parse_args()
    from kallos_models import tuner
    from kallos_models.config import resolve_settings

    work = Path(tempfile.mkdtemp(prefix="kallos_bench_workers_"))
    url = pg_database("kallos_bench_workers")
    ingest_shared(url, "BTC", "1d", "binance_klines/BTCUSDT_1d.csv")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for run in range(args.runs):
        for workers in (1, 2) if run % 2 == 0 else (2, 1):
            settings = resolve_settings(
                {
                    "db_url": url,
                    "asset_id": "BTC",
                    "timeframe": "1d",
                    "model_name": "gru",
                    "tune_end_date": "2023-12-31",
                    "n_trials": args.trials,
                    "seed": 42,
                    "max_epochs": args.max_epochs,
                    "workers": workers,
                    "study_name": f"workers_{workers}_{run}",
                    "output_path": str(work),
                    "accelerator": "cpu",
                },
                cwd=work,
            )
            started = time.perf_counter()
            result = tuner.tune(settings, search_space=bench_space, pruner=None)
            hours = (time.perf_counter() - started) / 3600
            rates[workers].append(result.summary["n_finished"] / hours)
    ratio = median(rates[2]) / median(rates[1])
    record(
        "tune_workers",
        {
            "what": f"tune on PostgreSQL, 2 workers ({args.trials} trials)",
            "compared_with": "1 worker, same trials, same 2 cores",
            "target": ">= 1.6x trials per hour",
            "measured": f"{ratio:.2f}x ({median(rates[2]):.0f} vs {median(rates[1]):.0f} trials/h, "
            f"median of {args.runs})",
            "verdict": "met" if ratio >= 1.6 else "missed",
            "command": f"python bench/tune_workers.py --runs {args.runs} --trials {args.trials} "
            f"--max-epochs {args.max_epochs}",
        },
    )


if __name__ == "__main__":
    main()
