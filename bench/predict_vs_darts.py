"""`kallos-run predict` against the same forecast written directly against Darts.

Both are fresh processes, alternating, as a scheduler runs them: ours is `kallos-run -q
predict` from a bundle on real BTC 1d bars (bundle checks, database read, indicators,
preprocessing, predict, price, storing the row); theirs is a script that imports Darts, loads
the same model file (`BlockRNNModel.load`) and predicts one step from the already transformed
input series, pickled beforehand (the floor: interpreter, imports, load, predict). Target <= 1.2x.

    .venv/bin/python bench/predict_vs_darts.py [--runs 5]
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
from pathlib import Path

from _common import KALLOS_RUN, PYTHON, ingest_shared, record_ratio, side_by_side, time_command

TRAIN_END = "2025-05-31"
AS_OF = "2025-07-05 02:00"

THEIRS = """
import pickle, sys
from darts.models import BlockRNNModel
model = BlockRNNModel.load(sys.argv[1], map_location="cpu")
with open(sys.argv[2], "rb") as handle:
    target, covariates = pickle.load(handle)
print(model.predict(n=1, series=target, past_covariates=covariates, verbose=False).values())
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    import pandas as pd

    from kallos_models.config import resolve_settings
    from kallos_models.data import datasets
    from kallos_models.modelling import bundles, forecasting, series
    from kallos_models.stages import train as trainer

    work = Path(tempfile.mkdtemp(prefix="kallos_bench_predict_"))
    url = f"sqlite:///{work / 'kallos.db'}"
    ingest_shared(url, "BTC", "1d", "binance_klines/BTCUSDT_1d.csv")
    settings = resolve_settings(
        {
            "db_url": url,
            "asset_id": "BTC",
            "model_name": "gru",
            "train_end_date": TRAIN_END,
            "start_date": "2022-01-01",
            "output_path": str(work / "models"),
            "accelerator": "cpu",
        },
        cwd=work,
    )
    params = {"hidden_dim": 32, "n_rnn_layers": 1, "input_chunk_length": 30, "n_epochs": 1}
    bundle = trainer.train_model(settings, params, overwrite=True)

    # theirs reads the very window ours will: the lookback ending at the newest closed bar
    loaded = bundles.load_bundle(bundle.paths.model)
    model, pre = loaded.model, loaded.preprocessor
    needed = forecasting.lookback_bars(model.input_chunk_length, 1, pre.target_transform)
    frame = datasets.load_features_from_db("BTC", "2025-07-04", url, start_date="2025-01-01")
    frame = frame.iloc[-needed:]
    offset = series.bar_offset(frame, "frame")
    inputs = work / "inputs.pkl"
    with inputs.open("wb") as handle:
        pickle.dump(
            (
                series.to_series(pre.transform_target(frame), offset),
                series.to_series(pre.transform_covariates(frame), offset),
            ),
            handle,
        )
    script = work / "direct_predict.py"
    script.write_text(THEIRS)
    env_note = f"origin {frame.index[-1]:%Y-%m-%d}, lookback {needed} bars"
    assert frame.index[-1] == pd.Timestamp("2025-07-04")

    ours_cmd = [
        KALLOS_RUN, "-q", "predict", "--model-path", str(bundle.paths.model),
        "--db-url", url, "--as-of", AS_OF,
    ]  # fmt: skip
    ours, theirs = side_by_side(
        lambda: time_command(ours_cmd, cwd=work),
        lambda: time_command([PYTHON, str(script), str(bundle.paths.model), str(inputs)], cwd=work),
        args.runs,
    )
    record_ratio(
        "predict",
        what=f"`kallos-run predict` (GRU 32, BTC 1d, {env_note}, forecast stored)",
        compared_with="a fresh Python process: import Darts, BlockRNNModel.load, predict(1) "
        "from the pickled input series",
        target=1.2,
        ours=ours,
        theirs=theirs,
        command=f"python bench/predict_vs_darts.py --runs {args.runs}",
    )


if __name__ == "__main__":
    main()
