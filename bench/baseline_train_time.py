"""Training time of the regression baselines (`linear`, `lightgbm`) against `gru`, same data.

Real BTC daily bars from ../shared/data, trained to 2024-06-30 through the same
`stages.train.train_model` (bundle written, data read from SQLite), each with the zoo's
default parameters (gru: hidden 64 x 2 layers, lookback 30, `--epochs` epochs; lightgbm: 200
trees, 15 leaves; linear: least squares), all with lookback 30. The figure is the model fit
time the manifest records (`training_seconds`), median of `--runs`; the wall time of the
whole `train_model` call is printed beside it. Each bundle is then evaluated on the hold-out
2024-07-02 .. 2025-07-04 (one-step forecasts), so the speed comes with the skill it buys: the
RMSE ratio to naive persistence.

    .venv/bin/python bench/baseline_train_time.py [--runs 3] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ingest_shared, record

TRAIN_END, TEST_START, TEST_END = "2024-06-30", "2024-07-02", "2025-07-04"
MODELS = ("gru", "lightgbm", "linear")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    from kallos_models.config import resolve_settings
    from kallos_models.stage_settings import evaluate_settings
    from kallos_models.stages import evaluate as evaluation
    from kallos_models.stages import train as trainer

    work = Path(tempfile.mkdtemp(prefix="kallos_bench_baselines_"))
    url = f"sqlite:///{work / 'kallos.db'}"
    ingest_shared(url, "BTC", "1d", "binance_klines/BTCUSDT_1d.csv")
    results: dict[str, dict[str, float]] = {}
    for model_name in MODELS:
        settings = resolve_settings(
            {
                "db_url": url,
                "asset_id": "BTC",
                "timeframe": "1d",
                "model_name": model_name,
                "train_end_date": TRAIN_END,
                "test_start_date": TEST_START,
                "test_end_date": TEST_END,
                "output_path": str(work / model_name),
                "accelerator": "cpu",
                "seed": 0,
            },
            cwd=work,
        )
        params = {"n_epochs": args.epochs} if model_name == "gru" else {}
        fits, walls = [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            bundle = trainer.train_model(settings, params, overwrite=True)
            walls.append(time.perf_counter() - started)
            fits.append(float(bundle.manifest["training_seconds"]))
            print(f"{model_name}: fit {fits[-1]:.2f} s, train_model {walls[-1]:.2f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
        stage = evaluate_settings(settings.replace(output_path=str(work / f"{model_name}_eval")))
        metrics = evaluation.evaluate_model(stage, model_path=bundle.paths.model).metrics
        results[model_name] = {
            "fit": statistics.median(fits),
            "wall": statistics.median(walls),
            "rmse_ratio": float(metrics["rmse_ratio"]),
            "n": int(metrics["n"]),
            "rows": int(bundle.manifest["train_rows"]),
        }
    gru = results["gru"]
    measured = "; ".join(
        f"{name} {r['fit']:.2f} s ({r['fit'] / gru['fit']:.3f}x gru), train_model "
        f"{r['wall']:.2f} s, hold-out RMSE ratio to naive {r['rmse_ratio']:.4f}"
        for name, r in results.items()
    )
    print(json.dumps(results, indent=2))
    record(
        "baseline_train_time",
        {
            "what": f"training `lightgbm` and `linear` against `gru` on BTC 1d "
            f"({gru['rows']:,} rows to {TRAIN_END}; zoo defaults, lookback 30, gru "
            f"{args.epochs} epochs), then their hold-out ({gru['n']} one-step forecasts "
            f"{TEST_START}..{TEST_END})",
            "compared_with": "`gru` on the same data through the same `train_model`",
            "target": "a ratio (no target)",
            "measured": f"model fit, median of {args.runs}: {measured}",
            "verdict": "measured",
            "command": f"python bench/baseline_train_time.py --runs {args.runs} "
            f"--epochs {args.epochs}",
        },
    )


if __name__ == "__main__":
    main()
