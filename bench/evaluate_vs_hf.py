"""`evaluate` on one year of 4h bars against Darts' historical_forecasts(retrain=False) alone.

Both run in one warm process (imports done), alternating: ours is
`evaluation.evaluate_model` (checksums, bundle load, DB read, transforms, rolling forecasts,
price reconstruction, metrics, backtest, plot, files); theirs is the bare
`model.historical_forecasts(...)` call on the same, already transformed series. Target <= 1.2x.

    .venv/bin/python bench/evaluate_vs_hf.py [--runs 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import SHARED_DATA, median, record_ratio, side_by_side

TRAIN_END, TEST_START, TEST_END = "2024-12-31 20:00", "2025-01-01", "2025-12-31 20:00"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    import pandas as pd

    from kallos_models.config import resolve_settings
    from kallos_models.data import datasets, db, ingest
    from kallos_models.modelling import bundles as artifacts
    from kallos_models.modelling import forecasting, series
    from kallos_models.modelling.backtest import backtest_curves
    from kallos_models.stages import evaluate as evaluation
    from kallos_models.stages import train as trainer

    work = Path(tempfile.mkdtemp(prefix="kallos_bench_eval_"))
    url = f"sqlite:///{work / 'kallos.db'}"
    ingest.ingest_file(
        db.create_db_engine(url), "BTC", "4h", SHARED_DATA / "binance_klines/BTCUSDT_4h.csv"
    )
    settings = resolve_settings(
        {
            "db_url": url,
            "asset_id": "BTC",
            "timeframe": "4h",
            "model_name": "gru",
            "train_end_date": TRAIN_END,
            "start_date": "2023-01-01",
            "test_start_date": TEST_START,
            "test_end_date": TEST_END,
            "output_path": str(work / "models"),
            "accelerator": "cpu",
        },
        cwd=work,
    )
    params = {"hidden_dim": 32, "n_rnn_layers": 1, "input_chunk_length": 60, "n_epochs": 1}
    bundle = trainer.train_model(settings, params, overwrite=True)
    eval_settings = settings.replace(output_path=str(work / "eval"))

    loaded = artifacts.load_bundle(bundle.paths.model)
    model, pre = loaded.model, loaded.preprocessor
    lookback = forecasting.lookback_bars(model.input_chunk_length, 1, pre.target_transform)
    start = pd.Timestamp(TEST_START)
    frame = datasets.load_features_from_db(
        "BTC",
        TEST_END,
        url,
        timeframe="4h",
        start_date=start - pd.Timedelta(hours=4) * (lookback + 60),
    )
    offset = series.bar_offset(frame, "frame")
    target = series.to_series(pre.transform_target(frame), offset)
    covariates = series.to_series(pre.transform_covariates(frame), offset)

    results = {}

    def ours() -> float:
        t = time.perf_counter()
        results["last"] = evaluation.evaluate_model(eval_settings, model_path=bundle.paths.model)
        return time.perf_counter() - t

    def theirs() -> float:
        t = time.perf_counter()
        model.historical_forecasts(
            series=target,
            past_covariates=covariates,
            start=start,
            forecast_horizon=1,
            stride=1,
            retrain=False,
            last_points_only=False,
            verbose=False,
        )
        return time.perf_counter() - t

    ours(), theirs()  # warm-up: first calls pay one-off import and JIT costs
    a, b = side_by_side(ours, theirs, args.runs)
    # What the PNG alone costs: the same plot of the same forecasts, timed on its own.
    done = results["last"]
    curves = backtest_curves(done.forecasts, timeframe="4h")
    plot_times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        evaluation.plot_evaluation(
            done.forecasts, done.metrics, title="bench", path=work / "plot.png", curves=curves
        )
        plot_times.append(time.perf_counter() - t)
    plot = median(plot_times)
    without_plot = (median(a) - plot) / median(b)
    record_ratio(
        "evaluate",
        what="`evaluate` on one year of 4h bars (2,190 one-step forecasts, GRU 32)",
        compared_with="Darts `historical_forecasts(retrain=False)` alone, same series",
        target=1.2,
        ours=a,
        theirs=b,
        command=f"python bench/evaluate_vs_hf.py --runs {args.runs}",
        note=f"of which the 3-panel PNG {plot:.2f} s; without it {without_plot:.2f}x",
    )


if __name__ == "__main__":
    main()
