"""The training job written directly against Darts: the baseline for bench/train_vs_darts.py.

Same database rows, columns, preprocessing idea, hyperparameters and epochs as
`kallos-run train`, with none of kallos' checks, manifest or atomic writes.

    python bench/direct_darts_train.py DB_PATH PARAMS_JSON OUT_PATH
"""

from __future__ import annotations

import json
import sqlite3
import sys

import numpy as np
import pandas as pd
from darts import TimeSeries
from darts.models import BlockRNNModel
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, RobustScaler, StandardScaler

db_path, params_path, out_path = sys.argv[1:4]
params = json.loads(open(params_path).read())
with sqlite3.connect(db_path) as conn:
    frame = pd.read_sql_query(
        "SELECT open_time, close, volume, taker_buy_base_asset_volume, rsi, mfi, macd_diff, "
        "warmup FROM market_data WHERE asset_id = ? AND timeframe = ? AND open_time <= ? "
        "ORDER BY open_time",
        conn,
        params=("BTC", "1d", "2024-06-30 00:00:00"),
        parse_dates=["open_time"],
    )
frame = frame[~frame["warmup"].astype(bool)].set_index("open_time").asfreq("1D")
groups = {
    "volume": (
        ["volume", "taker_buy_base_asset_volume"],
        make_pipeline(FunctionTransformer(np.log1p), RobustScaler()),
    ),
    "bounded": (["rsi", "mfi"], MinMaxScaler()),
    "unbounded": (["macd_diff"], RobustScaler()),
}
covs = pd.concat(
    [
        pd.DataFrame(p.fit_transform(frame[cols]), index=frame.index, columns=cols)
        for cols, p in groups.values()
    ],
    axis=1,
).astype("float32")
log_ret = np.log(frame["close"]).diff().dropna()
target = pd.Series(StandardScaler().fit_transform(log_ret.to_frame()).ravel(), index=log_ret.index)
series = TimeSeries.from_series(target.astype("float32"), freq="1D")
past = TimeSeries.from_dataframe(covs, freq="1D")
model = BlockRNNModel(
    model="GRU",
    input_chunk_length=params["input_chunk_length"],
    output_chunk_length=1,
    hidden_dim=params["hidden_dim"],
    n_rnn_layers=params["n_rnn_layers"],
    dropout=params["dropout"],
    batch_size=params["batch_size"],
    n_epochs=params["n_epochs"],
    optimizer_kwargs={"lr": params["learning_rate"]},
    random_state=42,
    pl_trainer_kwargs={
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
    },
)
model.fit(series, past_covariates=past)
model.save(out_path)
