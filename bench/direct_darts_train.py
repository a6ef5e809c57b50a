"""The training job written directly against Darts: the baseline for bench/train_vs_darts.py.

Same database rows, columns (indicators computed with TA-Lib from the stored candles, as
kallos does when it loads a window), preprocessing idea, hyperparameters and epochs as
`kallos-run train`, with none of kallos' checks, manifest or atomic writes.

    python bench/direct_darts_train.py DB_PATH PARAMS_JSON OUT_PATH
"""

from __future__ import annotations

import json
import sqlite3
import sys

import numpy as np
import pandas as pd
import talib
from darts import TimeSeries
from darts.models import BlockRNNModel
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, RobustScaler, StandardScaler

db_path, params_path, out_path = sys.argv[1:4]
params = json.loads(open(params_path).read())
with sqlite3.connect(db_path) as conn:
    frame = pd.read_sql_query(
        "SELECT open_time, high, low, close, volume, taker_buy_base_asset_volume "
        "FROM market_data WHERE asset_id = ? AND timeframe = ? AND open_time <= ? "
        "ORDER BY open_time",
        conn,
        params=("BTC", "1d", "2024-06-30 00:00:00"),
        parse_dates=["open_time"],
    )
h, lo, c, v = (frame[k].to_numpy(dtype="float64") for k in ("high", "low", "close", "volume"))
frame["rsi"] = talib.RSI(c, timeperiod=14)
frame["mfi"] = talib.MFI(h, lo, c, v, timeperiod=14)
frame["macd_diff"] = talib.MACD(c, fastperiod=12, slowperiod=26, signalperiod=9)[2]
frame = frame.dropna(subset=["rsi", "mfi", "macd_diff"]).set_index("open_time").asfreq("1D")
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
