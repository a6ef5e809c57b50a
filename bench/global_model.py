"""One global GRU over BTC, ETH and SOL against three single-asset GRUs, on real 4h bars.

Real 4h bars of BTC, ETH and SOL from ../shared/data, the same training window for every
asset (``--start-date`` .. 2024-06-30) and the same hold-out (2024-07-01 .. 2025-07-04, one-step
forecasts). The global GRU is trained once on the three series (each scaled on its own
training rows, the asset's identity as static covariates) through `stages.train.train_model`
with ``asset_id="BTC,ETH,SOL"``; the three single-asset GRUs with the same parameters, seed and
epochs, one per asset. Each model is judged per asset by `stages.evaluate.evaluate_model`,
exactly as ``kallos-run evaluate`` judges it: the hold-out RMSE ratio to naive persistence
(below 1 beats "the next close is the last close") and the Diebold-Mariano p-value against
naive. Wall time: the one global fit against the sum of the three single fits.

    .venv/bin/python bench/global_model.py [--epochs 5] [--start-date 2020-09-01]
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

ASSETS = ("BTC", "ETH", "SOL")
TRAIN_END, TEST_START, TEST_END = "2024-06-30", "2024-07-01", "2025-07-04"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The per-asset comparison as a markdown table (documentation/evaluation.md)."""
    lines = [
        "| asset | single GRU RMSE ratio | DM p vs naive | global GRU RMSE ratio | DM p vs naive "
        "| single dir. acc. | global dir. acc. |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['asset']} | {_fmt(row['single_rmse_ratio'], '.4f')} "
            f"| {_fmt(row['single_dm_p'], '.3g')} | {_fmt(row['global_rmse_ratio'], '.4f')} "
            f"| {_fmt(row['global_dm_p'], '.3g')} | {_fmt(row['single_dir'], '.3f')} "
            f"| {_fmt(row['global_dir'], '.3f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--start-date", default="2020-09-01")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    from kallos_models.config import resolve_settings
    from kallos_models.stages.evaluate import evaluate_model
    from kallos_models.stages.train import train_model

    work = Path(tempfile.mkdtemp(prefix="kallos_bench_global_"))
    url = f"sqlite:///{work / 'kallos.db'}"
    for asset in ASSETS:
        ingest_shared(url, asset, "4h", f"binance_klines/{asset}USDT_4h.csv")
    base = {
        "db_url": url,
        "timeframe": "4h",
        "model_name": "gru",
        "start_date": args.start_date,
        "train_end_date": TRAIN_END,
        "test_start_date": TEST_START,
        "test_end_date": TEST_END,
        "accelerator": "cpu",
        "seed": 0,
    }
    params = {"n_epochs": args.epochs}  # the zoo's defaults otherwise

    def settings(asset_id: str, folder: str) -> Any:
        return resolve_settings(
            {**base, "asset_id": asset_id, "output_path": str(work / folder)}, cwd=work
        )

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    trained = train_model(settings(",".join(ASSETS), "global"), params, overwrite=True)
    seconds["global"] = time.perf_counter() - started
    print(f"global: trained in {seconds['global']:.1f} s", file=sys.stderr, flush=True)
    judged = evaluate_model(
        settings(",".join(ASSETS), "global_eval"), model_path=trained.paths.model
    ).metrics
    rows = []
    for asset in ASSETS:
        started = time.perf_counter()
        single = train_model(settings(asset, f"single_{asset}"), params, overwrite=True)
        seconds[asset] = time.perf_counter() - started
        print(f"{asset}: trained in {seconds[asset]:.1f} s", file=sys.stderr, flush=True)
        alone = evaluate_model(
            settings(asset, f"single_{asset}_eval"), model_path=single.paths.model
        ).metrics
        together = judged["per_asset"][asset]
        rows.append(
            {
                "asset": asset,
                "single_rmse_ratio": alone["rmse_ratio"],
                "single_dm_p": alone["diebold_mariano"]["p_value"],
                "global_rmse_ratio": together["rmse_ratio"],
                "global_dm_p": together["diebold_mariano"]["p_value"],
                "single_dir": alone["directional_accuracy"],
                "global_dir": together["directional_accuracy"],
                "n": alone["n"],
            }
        )
    single_total = sum(seconds[a] for a in ASSETS)
    summary = {
        "rows": rows,
        "global_pooled": judged["pooled"],
        "fit_seconds": seconds,
        "global_over_single_sum": seconds["global"] / single_total,
        "train_rows": trained.manifest["train_rows"],
    }
    print(json.dumps(summary, indent=2))
    print(markdown(rows))
    better = [r["asset"] for r in rows if r["global_rmse_ratio"] < r["single_rmse_ratio"]]
    record(
        "global_gru_4h",
        {
            "what": f"one global GRU over {', '.join(ASSETS)} 4h (zoo defaults, {args.epochs} "
            f"epochs, {args.start_date}..{TRAIN_END}): hold-out RMSE ratio to naive per asset "
            f"({rows[0]['n']} one-step forecasts {TEST_START}..{TEST_END}) and one fit's time",
            "compared_with": "three single-asset GRUs, same parameters, seed and epochs",
            "target": "global at least as good per asset; one fit no slower than the three",
            "measured": "; ".join(
                f"{r['asset']} {r['single_rmse_ratio']:.4f} single vs "
                f"{r['global_rmse_ratio']:.4f} global"
                for r in rows
            )
            + f"; fit {seconds['global']:.0f} s global vs {single_total:.0f} s for the three "
            f"({summary['global_over_single_sum']:.2f}x)",
            "verdict": f"global better on {len(better)} of {len(rows)} assets",
            "command": f"python bench/global_model.py --epochs {args.epochs} "
            f"--start-date {args.start_date}",
        },
    )


if __name__ == "__main__":
    main()
