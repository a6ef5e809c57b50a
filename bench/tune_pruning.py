"""Tune with pruning inside folds against the same seed with pruning off (20 trials each).

Target: wall time <= 0.5x, best value within 2%. GRU on BTC 1d up to 2023-12-31, the CPU
search space (``--space cpu``, what a tune without a GPU samples), up to 10 epochs per fold. Each
epoch's validation loss and each fold's score are reported; the pruners compared are the
median at the same step (``--pruner median``) and Hyperband (``--pruner hyperband``).

    .venv/bin/python bench/tune_pruning.py [--runs 2] [--trials 20] [--max-epochs 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import ingest_shared, median, record

MODES = ("none", "median", "hyperband")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--max-epochs", type=int, default=10)
    args = parser.parse_args()

    from kallos_models import tuner
    from kallos_models.config import resolve_settings

    work = Path(tempfile.mkdtemp(prefix="kallos_bench_prune_"))
    url = f"sqlite:///{work / 'kallos.db'}"
    ingest_shared(url, "BTC", "1d", "binance_klines/BTCUSDT_1d.csv")
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    bests: dict[str, list[float]] = {mode: [] for mode in MODES}
    pruned: dict[str, list[int]] = {mode: [] for mode in MODES}
    for run in range(args.runs):
        for mode in MODES if run % 2 == 0 else tuple(reversed(MODES)):
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
                    "pruner": mode,
                    "study_name": f"prune_{mode}_{run}",
                    "output_path": str(work / f"{mode}_{run}"),
                    "accelerator": "cpu",
                },
                cwd=work,
            )
            started = time.perf_counter()
            result = tuner.tune(settings, space="cpu")
            walls[mode].append(time.perf_counter() - started)
            bests[mode].append(result.study.best_value)
            pruned[mode].append(result.summary["trial_counts"]["PRUNED"])
            print(mode, run, f"{walls[mode][-1]:.0f} s", bests[mode][-1], pruned[mode][-1])
    off_wall, off_best = median(walls["none"]), median(bests["none"])
    for mode, key in (("median", "tune_pruning"), ("hyperband", "tune_pruning_hyperband")):
        ratio = median(walls[mode]) / off_wall
        best_gap = median(bests[mode]) / off_best - 1.0
        met = ratio <= 0.5 and abs(best_gap) <= 0.02
        record(
            key,
            {
                "what": f"tune, {args.trials} trials, pruning inside folds (--pruner {mode}: "
                "each epoch's validation loss and each fold's score)",
                "compared_with": "same seed, --pruner none",
                "target": "wall <= 0.5x, best within 2%",
                "measured": f"wall {ratio:.3f}x ({median(walls[mode]):.0f} s vs "
                f"{off_wall:.0f} s); best {best_gap:+.2%} ({median(bests[mode]):.1f} vs "
                f"{off_best:.1f} RMSE); {median(pruned[mode]):.0f} of {args.trials} trials "
                f"pruned; median of {args.runs}",
                "verdict": "met" if met else "missed",
                "command": f"python bench/tune_pruning.py --runs {args.runs} "
                f"--trials {args.trials} --max-epochs {args.max_epochs}",
            },
        )


if __name__ == "__main__":
    main()
