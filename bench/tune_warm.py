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


#: How close to the cold study's best a trial must come, in percent.
BANDS = (2.0, 0.5, 0.2, 0.1)


def _time_to(study: Any, target: float) -> tuple[float | None, int | None]:
    """Seconds from the study's first trial start until a trial completed at or below
    ``target``, and that trial's number; (None, None) when none did."""
    start = min(t.datetime_start for t in study.trials if t.datetime_start is not None)
    hits = [
        t
        for t in study.trials
        if t.state.name == "COMPLETE" and t.value is not None and t.value <= target
    ]
    if not hits:
        return None, None
    first = min(hits, key=lambda t: t.datetime_complete)
    return (first.datetime_complete - start).total_seconds(), first.number


def _wall(study: Any) -> float:
    """Seconds from the first trial's start to the last trial's end."""
    starts = [t.datetime_start for t in study.trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in study.trials if t.datetime_complete is not None]
    return (max(ends) - min(starts)).total_seconds()


def _tune(args: argparse.Namespace, url: str, work: Path) -> None:
    from kallos_models import tuner

    common = {"max_epochs": args.max_epochs, "tune_end_date": "2023-12-31"}
    tuner.tune(
        _settings(url, work, study_name="source_2022", tune_end_date="2022-12-31",
                  n_trials=args.source_trials, max_epochs=args.max_epochs, pruner="median"),
        space="cpu",
    )  # fmt: skip
    for name, pruner in (("cold", "none"), ("warm", "median")):
        result = tuner.tune(
            _settings(url, work, study_name=name, n_trials=args.trials, pruner=pruner, **common),
            space="cpu",
            warm_start_from="source_2022" if name == "warm" else None,
        )
        print(name, result.study.best_value, result.summary["warm_start"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--source-trials", type=int, default=20)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument(
        "--reuse", type=Path, default=None, help="a folder of an earlier run: measure its studies"
    )
    args = parser.parse_args()

    import optuna

    work = args.reuse or Path(tempfile.mkdtemp(prefix="kallos_bench_warm_"))
    url = f"sqlite:///{work / 'kallos.db'}"
    if args.reuse is None:
        ingest_shared(url, "BTC", "1d", "binance_klines/BTCUSDT_1d.csv")
        _tune(args, url, work)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    source, cold, warm = (
        optuna.load_study(study_name=name, storage=url) for name in ("source_2022", "cold", "warm")
    )
    best = cold.best_value
    cells = []
    for band in BANDS:
        (cold_at, cold_n), (warm_at, warm_n) = (
            _time_to(s, best * (1 + band / 100)) for s in (cold, warm)
        )
        warm_text = "never" if warm_at is None else f"{warm_at:.0f} s (trial {warm_n})"
        cold_text = "never" if cold_at is None else f"{cold_at:.0f} s (trial {cold_n})"
        ratio = f", {warm_at / cold_at:.2f}x" if warm_at and cold_at else ""
        cells.append(f"within {band:g}%: warm {warm_text} vs cold {cold_text}{ratio}")
    values = [t.value for t in cold.trials if t.state.name == "COMPLETE"]
    spread = max(values) / min(values) - 1.0
    marked = [t for t in warm.trials if t.user_attrs.get("warm_start") and t.value is not None]
    two_cold, _ = _time_to(cold, best * 1.02)
    two_warm, _ = _time_to(warm, best * 1.02)
    record(
        "tune_warm",
        {
            "what": f"time to within 2% of the best of a {args.trials}-trial unpruned study: "
            "median pruning per epoch + --warm-start-from last year's study",
            "compared_with": "cold start, --pruner none",
            "target": "sooner",
            "measured": "; ".join(cells)
            + f"; the {len(values)} cold trials' RMSE spans {spread:.1%}; whole tunes "
            f"{_wall(warm):.0f} s vs {_wall(cold):.0f} s; best {warm.best_value:.1f} vs "
            f"{best:.1f} RMSE; warm-started trials' best {min(t.value for t in marked):.1f}; "
            f"source study {_wall(source):.0f} s, not counted",
            "verdict": "met"
            if two_warm is not None and two_cold is not None and two_warm < two_cold
            else "missed",
            "command": f"python bench/tune_warm.py --trials {args.trials} "
            f"--source-trials {args.source_trials} --max-epochs {args.max_epochs}",
        },
    )


if __name__ == "__main__":
    main()
