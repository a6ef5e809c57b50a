"""`kallos-run train` (process start, DB read, features, fit, save) against the same job written
directly against Darts (bench/direct_darts_train.py). Target <= 1.10x.

    .venv/bin/python bench/train_vs_darts.py [--runs 5] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from _common import KALLOS_RUN, PYTHON, SHARED_DATA, record_ratio, side_by_side, time_command

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kallos_bench_train_"))
    db_path = work / "kallos.db"
    subprocess.run(
        [
            KALLOS_RUN,
            "-q",
            "ingest",
            "--asset-id",
            "BTC",
            "--timeframe",
            "1d",
            "--file",
            str(SHARED_DATA / "binance_klines/BTCUSDT_1d.csv"),
            "--db-url",
            f"sqlite:///{db_path}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    params = {
        "hidden_dim": 32,
        "n_rnn_layers": 1,
        "dropout": 0.0,
        "batch_size": 32,
        "input_chunk_length": 30,
        "learning_rate": 1e-3,
        "n_epochs": args.epochs,
    }
    params_path = work / "params.json"
    params_path.write_text(json.dumps(params))
    ours_cmd = [
        KALLOS_RUN,
        "-q",
        "train",
        "--model-name",
        "gru",
        "--asset-id",
        "BTC",
        "--end-date",
        "2024-06-30",
        "--params-file",
        str(params_path),
        "--db-url",
        f"sqlite:///{db_path}",
        "--accelerator",
        "cpu",
        "--output-path",
        str(work / "ours"),
        "--overwrite",
    ]
    theirs_cmd = [
        PYTHON,
        str(HERE / "direct_darts_train.py"),
        str(db_path),
        str(params_path),
        str(work / "direct.pt"),
    ]
    ours, theirs = side_by_side(
        lambda: time_command(ours_cmd), lambda: time_command(theirs_cmd), args.runs
    )
    record_ratio(
        "train",
        what=f"`kallos-run train` (GRU 32, {args.epochs} epochs, BTC 1d to 2024-06-30)",
        compared_with="the same job written directly against Darts (bench/direct_darts_train.py)",
        target=1.10,
        ours=ours,
        theirs=theirs,
        command=f"python bench/train_vs_darts.py --runs {args.runs} --epochs {args.epochs}",
    )


if __name__ == "__main__":
    main()
