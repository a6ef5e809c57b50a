"""Tune with per-fold pruning against the same seed with pruning off (20 trials each).

Target: wall time <= 0.5x, best value within 2%. GRU on BTC 1d up to 2023-12-31, the
registry's GRU space narrowed to widths 16-64 (bench_space), max 5 epochs per fold.

    .venv/bin/python bench/tune_pruning.py [--runs 3] [--trials 20] [--max-epochs 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import bench_space, ingest_shared, median, record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--max-epochs", type=int, default=5)
    args = parser.parse_args()
    import optuna

    from kallos_models import tuner
    from kallos_models.config import resolve_settings

    work = Path(tempfile.mkdtemp(prefix="kallos_bench_prune_"))
    url = f"sqlite:///{work / 'kallos.db'}"
    ingest_shared(url, "BTC", "1d", "binance_klines/BTCUSDT_1d.csv")
    walls: dict[str, list[float]] = {"on": [], "off": []}
    bests: dict[str, list[float]] = {"on": [], "off": []}
    for run in range(args.runs):
        for mode in ("on", "off") if run % 2 == 0 else ("off", "on"):
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
                    "study_name": f"prune_{mode}_{run}",
                    "output_path": str(work / f"{mode}_{run}"),
                    "accelerator": "cpu",
                },
                cwd=work,
            )
            pruner = None if mode == "on" else optuna.pruners.NopPruner()
            started = time.perf_counter()
            result = tuner.tune(settings, search_space=bench_space, pruner=pruner)
            walls[mode].append(time.perf_counter() - started)
            bests[mode].append(result.study.best_value)
    ratio = median(walls["on"]) / median(walls["off"])
    best_gap = median(bests["on"]) / median(bests["off"]) - 1.0
    met = ratio <= 0.5 and abs(best_gap) <= 0.02
    record(
        "tune_pruning",
        {
            "what": f"tune, {args.trials} trials, per-fold pruning on (MedianPruner)",
            "compared_with": "same seed, pruning off (NopPruner)",
            "target": "wall <= 0.5x, best within 2%",
            "measured": f"wall {ratio:.3f}x ({median(walls['on']):.0f} s vs "
            f"{median(walls['off']):.0f} s); best {best_gap:+.2%} "
            f"({median(bests['on']):.1f} vs {median(bests['off']):.1f} RMSE), "
            f"median of {args.runs}",
            "verdict": "met" if met else "missed",
            "command": f"python bench/tune_pruning.py --runs {args.runs} --trials {args.trials} "
            f"--max-epochs {args.max_epochs}",
        },
    )


if __name__ == "__main__":
    main()
