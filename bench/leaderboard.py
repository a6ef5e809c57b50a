"""The leaderboard on real BTC bars: deep, tree and linear models with intervals, one window.

Real BTC bars from ../shared/data (``--timeframe 1d`` or ``4h``), trained to 2024-06-30
through `stages.train.train_model` with the zoo's default parameters (lookback 30; the deep
models ``--epochs`` epochs) and evaluated, all on the same hold-out 2024-07-02 .. 2025-07-04
(one-step forecasts), by `compare.compare_models`, exactly as `kallos-run compare` ranks them.

Every model gives the 80% and 90% intervals: the deep models and lightgbm by quantile
regression (quantiles 0.05, 0.1, 0.5, 0.9, 0.95), linear (a point model) and a second
lightgbm by conformal prediction (Darts' ConformalNaiveModel, calibrated on the 200 bars
before the training end, held out of the fit, then online). The table gives each model's
RMSE ratio to naive persistence, the Diebold-Mariano p-value against naive, directional
accuracy, interval coverage and Winkler-score ratio to the naive interval (the trailing
empirical quantiles of past returns applied to the last close), backtest Sharpe and drawdown.

Then the ensemble: the three zoo models with the lowest RMSE ratio, as point models, combined
by a RegressionEnsembleModel whose weights are learned on their one-step forecasts of the last
200 bars before the calibration window (`train --model-name ensemble --members A,B,C
--conformal`), its intervals conformal; the leaderboard is ranked again with it.

Parameters are the zoo's defaults, not tuned ones: the figures say what a model gives out of
the box.

    .venv/bin/python bench/leaderboard.py --timeframe 1d [--epochs 20] [--models gru,linear]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ingest_shared, record

TRAIN_END, TEST_START, TEST_END = "2024-06-30", "2024-07-02", "2025-07-04"
QUANTILES = "0.05,0.1,0.5,0.9,0.95"
#: label -> (zoo model, interval method)
ENTRIES: dict[str, tuple[str, str]] = {
    "gru": ("gru", "quantile"),
    "lstm": ("lstm", "quantile"),
    "transformer": ("transformer", "quantile"),
    "lightgbm": ("lightgbm", "quantile"),
    "lightgbm-conformal": ("lightgbm", "conformal"),
    "linear-conformal": ("linear", "conformal"),
}


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict[str, Any]], labels: dict[str, str]) -> str:
    """The leaderboard as a markdown table (documentation/evaluation.md)."""
    head = (
        "| rank | model | RMSE ratio | DM p vs naive | DM p vs leader | dir. acc. | cov. 80% "
        "| cov. 90% | Winkler ratio 80% | Winkler ratio 90% | Sharpe | max DD |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for row in rows:
        lines.append(
            f"| {row['rank']} | {labels.get(row['model'], row['model'])} "
            f"| {_fmt(row['rmse_ratio'], '.4f')} | {_fmt(row['dm_p_value_vs_naive'], '.3g')} "
            f"| {_fmt(row['dm_p_value_vs_leader'], '.3g')} "
            f"| {_fmt(row['directional_accuracy'], '.3f')} | {_fmt(row.get('coverage_80'), '.3f')} "
            f"| {_fmt(row.get('coverage_90'), '.3f')} "
            f"| {_fmt(row.get('interval_score_ratio_80'), '.3f')} "
            f"| {_fmt(row.get('interval_score_ratio_90'), '.3f')} | {_fmt(row['sharpe'], '.2f')} "
            f"| {_fmt(row['max_drawdown'], '.3f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeframe", default="1d", choices=["1d", "4h"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--models", default=",".join(ENTRIES), help="labels, comma-separated")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    from kallos_models.compare import compare_models
    from kallos_models.config import resolve_settings
    from kallos_models.modelling import zoo
    from kallos_models.modelling.ensemble import EnsembleSpec
    from kallos_models.modelling.intervals import IntervalSpec
    from kallos_models.stages import train as trainer

    labels_wanted = [label.strip() for label in args.models.split(",") if label.strip()]
    work = Path(tempfile.mkdtemp(prefix="kallos_bench_leaderboard_"))
    url = f"sqlite:///{work / 'kallos.db'}"
    ingest_shared(url, "BTC", args.timeframe, f"binance_klines/BTCUSDT_{args.timeframe}.csv")
    base = {
        "db_url": url,
        "asset_id": "BTC",
        "timeframe": args.timeframe,
        "train_end_date": TRAIN_END,
        "test_start_date": TEST_START,
        "test_end_date": TEST_END,
        "accelerator": "cpu",
        "seed": 0,
    }
    paths, fit_seconds = [], {}
    for label in labels_wanted:
        model_name, method = ENTRIES[label]
        settings = resolve_settings(
            {**base, "model_name": model_name, "output_path": str(work / label)}, cwd=work
        )
        spec = IntervalSpec.from_flags(
            QUANTILES if method == "quantile" else None, method == "conformal", None
        )
        params = {"n_epochs": args.epochs} if zoo.get_spec(model_name).deep else {}
        started = time.perf_counter()
        bundle = trainer.train_model(settings, params, overwrite=True, intervals=spec)
        fit_seconds[label] = time.perf_counter() - started
        print(f"{label}: trained in {fit_seconds[label]:.1f} s", file=sys.stderr, flush=True)
        paths.append(bundle.paths.model)

    settings = resolve_settings({**base, "output_path": str(work / "compare")}, cwd=work)
    first = compare_models(settings, paths)
    by_source = {str(path): label for path, label in zip(paths, labels_wanted, strict=True)}
    best: list[str] = []
    for row in first.rows:  # best first
        name = ENTRIES[by_source[str(row["source"])]][0]
        if name not in best:
            best.append(name)
    if len(best) >= 2:
        members = EnsembleSpec(
            members=tuple(best[:3]),
            member_params={m: {"n_epochs": args.epochs} for m in best[:3] if zoo.get_spec(m).deep},
        )
        settings = resolve_settings(
            {**base, "model_name": "ensemble", "output_path": str(work / "ensemble")}, cwd=work
        )
        started = time.perf_counter()
        bundle = trainer.train_model(
            settings, {}, overwrite=True, intervals=IntervalSpec.from_flags(None, True, None),
            members=members,
        )  # fmt: skip
        label = f"ensemble({','.join(best[:3])})"
        fit_seconds[label] = time.perf_counter() - started
        print(f"{label}: trained in {fit_seconds[label]:.1f} s", file=sys.stderr, flush=True)
        paths.append(bundle.paths.model)
        by_source[str(bundle.paths.model)] = label
        labels_wanted.append(label)
    settings = resolve_settings({**base, "output_path": str(work / "compare_all")}, cwd=work)
    result = compare_models(settings, paths)
    # compare labels bundles by model name (lightgbm, lightgbm-2): map back to ours
    labels = {row["model"]: by_source[str(row["source"])] for row in result.rows}
    table = markdown(result.rows, labels)
    print(json.dumps({"leaderboard": result.rows, "fit_seconds": fit_seconds}, indent=2))
    print(table)
    window = result.summary
    record(
        f"leaderboard_btc_{args.timeframe}",
        {
            "what": f"leaderboard on BTC {args.timeframe}: {', '.join(labels_wanted)} (zoo "
            f"defaults, deep {args.epochs} epochs, trained to {TRAIN_END}), ranked on "
            f"{window.get('n')} one-step forecasts {TEST_START}..{TEST_END}",
            "compared_with": "naive persistence and the naive interval (trailing return quantiles)",
            "target": "80%/90% coverage within 5 points; Winkler ratio below 1.0",
            "measured": "; ".join(
                f"{labels[row['model']]} RMSE ratio {_fmt(row['rmse_ratio'], '.4f')}, coverage "
                f"{_fmt(row.get('coverage_80'), '.3f')}/{_fmt(row.get('coverage_90'), '.3f')}, "
                f"Winkler ratio {_fmt(row.get('interval_score_ratio_80'), '.3f')}/"
                f"{_fmt(row.get('interval_score_ratio_90'), '.3f')}"
                for row in result.rows
            ),
            "verdict": "measured",
            "command": f"python bench/leaderboard.py --timeframe {args.timeframe} "
            f"--epochs {args.epochs}",
        },
    )


if __name__ == "__main__":
    main()
