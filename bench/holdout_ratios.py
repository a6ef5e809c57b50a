"""Hold-out RMSE of every registered model against naive persistence on real BTC daily bars.

Trains each model with its registry defaults (epochs capped) on BTCUSDT 1d up to 2024-06-30 and
evaluates 2024-07-02 .. 2025-07-04 at horizon 1, through the same library calls as
`kallos-run train` and `kallos-run evaluate`. Prints a Markdown table on stdout.

    .venv/bin/python bench/holdout_ratios.py [--epochs 20] [--models gru,lstm] [--seed 42]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "binance_klines" / "BTCUSDT_1d.csv"


def main() -> None:
    from kallos_models.config import resolve_settings
    from kallos_models.data import db, ingest
    from kallos_models.modelling.zoo import model_names
    from kallos_models.stages import evaluate as evaluation
    from kallos_models.stages import train as trainer

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--models", default=",".join(model_names()))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--target-transform", choices=["log_return", "price"], default="log_return")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kallos_holdout_"))
    url = f"sqlite:///{work / 'kallos.db'}"
    ingest.ingest_file(db.create_db_engine(url), "BTC", "1d", DATA)
    rows = []
    for model in args.models.split(","):
        settings = resolve_settings(
            {
                "db_url": url,
                "asset_id": "BTC",
                "model_name": model,
                "timeframe": "1d",
                "train_end_date": "2024-06-30",
                "test_start_date": "2024-07-02",
                "test_end_date": "2025-07-04",
                "seed": args.seed,
                "target_transform": args.target_transform,
                "max_epochs": args.epochs,
                "output_path": str(work / "models"),
            },
            cwd=work,
        )
        started = time.perf_counter()
        trained = trainer.train_model(settings, {"n_epochs": args.epochs}, overwrite=True)
        result = evaluation.evaluate_model(
            settings.replace(output_path=str(work / "eval" / model)), model_path=trained.paths.model
        )
        m = result.metrics
        rows.append(
            (
                model,
                m["rmse"],
                m["naive"]["rmse"],
                m["rmse_ratio"],
                m["directional_accuracy"],
                m["diebold_mariano"]["p_value"],
                time.perf_counter() - started,
            )
        )
        print(json.dumps({"model": model, "ratio": m["rmse_ratio"]}), file=sys.stderr, flush=True)
    print(
        f"Epochs {args.epochs}, seed {args.seed}, target {args.target_transform}, "
        "registry default hyperparameters.\n"
    )
    print("| model | RMSE | naive RMSE | ratio | directional accuracy | DM p-value | seconds |")
    print("|---|---|---|---|---|---|---|")
    for model, rmse, naive, ratio, da, p, secs in rows:
        p_text = "n/a" if p is None else f"{p:.3f}"
        print(
            f"| {model} | {rmse:.1f} | {naive:.1f} | {ratio:.4f} | {da:.3f} | {p_text} "
            f"| {secs:.0f} |"
        )


if __name__ == "__main__":
    main()
