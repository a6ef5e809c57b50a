"""`evaluate --retrain-every 30` on one year of daily bars against Darts' own retraining loop.

Both run in one warm process (imports done), alternating. Ours is
`stages.evaluate.retrain_backtest` (checksums, bundle load, DB read, per refit: preprocessing
fit on the rows before the refit point, model fit, one batched forecast of the next 30 bars;
then price reconstruction, metrics, backtest, plot, files). Theirs is the bare
`model.historical_forecasts(..., retrain=30)` call with the same model, parameters, epochs
and seed on the same series, already transformed once by the bundle's preprocessing (Darts
cannot refit it): 13 fits, then one `predict` per bar. Target <= 1.1x.

Run it on a quiet machine: the fits share 2 cores with anything else running (a concurrent
training once made every fit 20x slower).

    .venv/bin/python bench/retrain_backtest.py [--runs 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from _common import ingest_shared, record_ratio, side_by_side

TRAIN_END, TEST_START, TEST_END = "2024-06-30", "2024-07-02", "2025-06-30"
EVERY = 30


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    import pandas as pd

    from kallos_models.config import resolve_settings
    from kallos_models.data import datasets
    from kallos_models.modelling import bundles, fitting, series, zoo
    from kallos_models.stage_settings import evaluate_settings
    from kallos_models.stages import evaluate as evaluation
    from kallos_models.stages import train as trainer

    work = Path(tempfile.mkdtemp(prefix="kallos_bench_retrain_"))
    url = f"sqlite:///{work / 'kallos.db'}"
    ingest_shared(url, "BTC", "1d", "binance_klines/BTCUSDT_1d.csv")
    settings = resolve_settings(
        {
            "db_url": url,
            "asset_id": "BTC",
            "timeframe": "1d",
            "model_name": "gru",
            "train_end_date": TRAIN_END,
            "test_start_date": TEST_START,
            "test_end_date": TEST_END,
            "output_path": str(work / "models"),
            "accelerator": "cpu",
        },
        cwd=work,
    )
    params = {
        "hidden_dim": 16,
        "n_rnn_layers": 1,
        "dropout": 0.0,
        "batch_size": 64,
        "input_chunk_length": 30,
        "n_epochs": args.epochs,
    }
    bundle = trainer.train_model(settings, params, overwrite=True)
    manifest = bundle.manifest
    stage = evaluate_settings(settings.replace(output_path=str(work / "eval")), retrain_every=EVERY)

    # theirs: the same rows (the bundle's first training bar to the window's end), transformed
    # once with the bundle's preprocessing, and a fresh model of the bundle's recipe
    pre = bundles.load_bundle(bundle.paths.model).preprocessor
    columns = list(dict.fromkeys([pre.target_col, *pre.feature_columns]))
    frame = datasets.load_features_from_db(
        "BTC", TEST_END, url, timeframe="1d", columns=columns, indicators=manifest["indicators"]
    )
    frame = frame[frame.index >= pd.Timestamp(manifest["train_start"])]
    offset = series.bar_offset(frame, "frame")
    target = series.to_series(pre.transform_target(frame), offset)
    covariates = series.to_series(pre.transform_covariates(frame), offset)
    used = manifest["params"]

    results = {}

    def ours() -> float:
        t = time.perf_counter()
        results["ours"] = evaluation.retrain_backtest(stage, model_path=bundle.paths.model)
        return time.perf_counter() - t

    def theirs() -> float:
        t = time.perf_counter()
        model = zoo.create_model(
            "gru",
            used,
            trainer_kwargs=fitting.build_trainer_kwargs(accelerator="cpu"),
            random_state=manifest["seed"],
            n_epochs=used["n_epochs"],
        )
        results["theirs"] = model.historical_forecasts(
            series=target,
            past_covariates=covariates,
            start=pd.Timestamp(TEST_START),
            forecast_horizon=1,
            stride=1,
            retrain=EVERY,
            last_points_only=False,
            verbose=False,
        )
        return time.perf_counter() - t

    def timed(name: str, job):
        def run() -> float:
            seconds = job()
            print(f"{name}: {seconds:.1f} s", file=sys.stderr, flush=True)
            return seconds

        return run

    # warm-up: the first call pays the one-off imports (torch, Lightning, Darts) for both
    timed("warm-up (ours)", ours)()
    a, b = side_by_side(timed("ours", ours), timed("theirs", theirs), args.runs)
    done = results["ours"].metrics
    if len(results["theirs"]) != done["n"]:
        raise SystemExit(f"Darts made {len(results['theirs'])} forecasts, ours {done['n']}")
    fit_total = sum(r["fit_seconds"] for r in done["refits"])
    record_ratio(
        "retrain_backtest",
        what=f"`evaluate --retrain-every {EVERY}` on one year of 1d bars ({done['n']} one-step "
        f"forecasts, {done['n_refits']} refits of a GRU 16, {args.epochs} epochs, on "
        f"{done['refits'][0]['train_end'][:10]} and earlier bars from 2018)",
        compared_with=f"Darts `historical_forecasts(retrain={EVERY})` alone, same model, "
        "params, epochs, seed and series (preprocessing fit once)",
        target=1.1,
        ours=a,
        theirs=b,
        command=f"python bench/retrain_backtest.py --runs {args.runs} --epochs {args.epochs}",
        note=f"of ours, the {done['n_refits']} model fits {fit_total:.2f} s in the last run; "
        f"RMSE ratio to naive {done['rmse_ratio']:.3f}",
    )


if __name__ == "__main__":
    main()
