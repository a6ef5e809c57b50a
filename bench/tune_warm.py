"""Time to a good configuration: pruned and warm-started against cold and unpruned.

The target value is the best of a 40-trial study with pruning off and no warm start (cold);
the measure is the wall time each tune needs until one of its trials is within 2% of it. The
warm-started tune prunes per epoch (median) and starts from the best 3 configurations of the
same model and asset tuned a year earlier (data up to 2022-12-31, 20 trials, median pruning:
the study a periodic re-tune has at hand; the source's own time is not counted). GRU on BTC 1d
up to 2023-12-31, the CPU search space (what a tune without a GPU samples), 10 epochs per fold,
sampler seed 42.

    .venv/bin/python bench/tune_warm.py [--trials 40] [--source-trials 20] [--max-epochs 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import ingest_shared, record


def _settings(url: str, work: Path, **values: Any) -> Any:
    from kallos_models.config import resolve_settings

    return resolve_settings(
        {
            "db_url": url,
            "asset_id": "BTC",
            "timeframe": "1d",
            "model_name": "gru",
            "seed": 42,
            "accelerator": "cpu",
            "output_path": str(work / str(values["study_name"])),
            **values,
        },
        cwd=work,
    )


def _time_to(study: Any, started: datetime, target: float) -> tuple[float | None, int | None]:
    """Seconds from ``started`` until a trial completed at or below ``target``, and its number."""
    hits = [
        t
        for t in study.trials
        if t.state.name == "COMPLETE" and t.value is not None and t.value <= target
    ]
    if not hits:
        return None, None
    first = min(hits, key=lambda t: t.datetime_complete)
    return (first.datetime_complete - started).total_seconds(), first.number


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--source-trials", type=int, default=20)
    parser.add_argument("--max-epochs", type=int, default=10)
    args = parser.parse_args()

    from kallos_models import tuner

    work = Path(tempfile.mkdtemp(prefix="kallos_bench_warm_"))
    url = f"sqlite:///{work / 'kallos.db'}"
    ingest_shared(url, "BTC", "1d", "binance_klines/BTCUSDT_1d.csv")
    common = {"max_epochs": args.max_epochs, "tune_end_date": "2023-12-31"}

    started = time.perf_counter()
    tuner.tune(
        _settings(url, work, study_name="source_2022", tune_end_date="2022-12-31",
                  n_trials=args.source_trials, max_epochs=args.max_epochs, pruner="median"),
        space="cpu",
    )  # fmt: skip
    source_wall = time.perf_counter() - started
    print(f"source study: {source_wall:.0f} s")

    runs: dict[str, tuple[Any, datetime, float]] = {}
    for name, extra in (
        ("cold", {"pruner": "none"}),
        ("warm", {"pruner": "median"}),
    ):
        begun, clock = datetime.now(), time.perf_counter()
        result = tuner.tune(
            _settings(url, work, study_name=name, n_trials=args.trials, **common, **extra),
            space="cpu",
            warm_start_from="source_2022" if name == "warm" else None,
        )
        runs[name] = (result, begun, time.perf_counter() - clock)
        print(name, f"{runs[name][2]:.0f} s", result.study.best_value)

    cold, cold_start, cold_wall = runs["cold"]
    warm, warm_start, warm_wall = runs["warm"]
    target = cold.study.best_value * 1.02
    cold_at, cold_trial = _time_to(cold.study, cold_start, target)
    warm_at, warm_trial = _time_to(warm.study, warm_start, target)
    report = warm.summary["warm_start"]
    reached = warm_at is not None and cold_at is not None
    ratio = warm_at / cold_at if reached else None
    record(
        "tune_warm",
        {
            "what": f"time to within 2% of the best of a {args.trials}-trial unpruned study: "
            "median pruning per epoch + --warm-start-from last year's study",
            "compared_with": "cold start, --pruner none",
            "target": "sooner",
            "measured": (
                f"{ratio:.3f}x ({warm_at:.0f} s, trial {warm_trial} vs {cold_at:.0f} s, "
                f"trial {cold_trial})"
                if ratio is not None
                else f"the warm tune never came within 2% ({warm.study.best_value:.1f} vs "
                f"target {target:.1f})"
            )
            + f"; whole tunes {warm_wall:.0f} s vs {cold_wall:.0f} s, best "
            f"{warm.study.best_value:.1f} vs {cold.study.best_value:.1f} RMSE; warm-started "
            f"trials' best {report['best_warm']:.1f} vs the cold trials' "
            f"{report['best_cold']:.1f}; source study {source_wall:.0f} s, not counted",
            "verdict": "met" if ratio is not None and ratio < 1.0 else "missed",
            "command": f"python bench/tune_warm.py --trials {args.trials} "
            f"--source-trials {args.source_trials} --max-epochs {args.max_epochs}",
        },
    )


if __name__ == "__main__":
    main()
