"""Shared test tools: small generated market data, tiny model parameters, the CLI runner."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

BINANCE_HEADER = (
    "Open time,Open,High,Low,Close,Volume,Close time,Quote asset volume,Number of trades,"
    "Taker buy base asset volume,Taker buy quote asset volume,Ignore"
)


def make_ohlcv(
    n: int = 300, freq: str = "1D", start: str = "2021-01-01", seed: int = 0
) -> pd.DataFrame:
    """Geometric Brownian motion bars with consistent OHLC, indexed by open time."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range(start, periods=n, freq=freq, name="open_time")
    log_ret = rng.normal(0.0005, 0.03, n)
    close = 100.0 * np.exp(np.cumsum(log_ret))
    open_ = np.concatenate([[100.0], close[:-1]])
    spread = np.abs(rng.normal(0, 0.01, n)) * close
    high = np.maximum(open_, close) + spread
    low = np.minimum(open_, close) - spread
    volume = rng.lognormal(8, 0.5, n)
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=idx
    )


def write_binance_csv(
    frame: pd.DataFrame, path: Path, *, header: bool = True, time_as: str = "text"
) -> Path:
    """Write bars as a Binance 12-column kline file.

    ``time_as``: ``text`` (``2021-01-01 00:00:00.000000 UTC``), ``ms`` or ``us`` epochs.
    """
    step = frame.index[1] - frame.index[0]
    if time_as == "text":
        open_t = [t.strftime("%Y-%m-%d %H:%M:%S.%f") + " UTC" for t in frame.index]
        close_t = [
            (t + step - pd.Timedelta("1ms")).strftime("%Y-%m-%d %H:%M:%S.%f") + " UTC"
            for t in frame.index
        ]
    else:
        mult = 1_000 if time_as == "ms" else 1_000_000
        open_t = [str(int(t.value // 1_000_000_000 * mult)) for t in frame.index]
        close_t = [str(int((t + step).value // 1_000_000_000 * mult) - 1) for t in frame.index]
    lines = [BINANCE_HEADER] if header else []
    for i, (o, h, lo, c, v) in enumerate(
        frame[["open", "high", "low", "close", "volume"]].itertuples(index=False)
    ):
        o, h, lo, c, v = (float(x) for x in (o, h, lo, c, v))
        qv = v * c
        trades = 100 + int(frame.index[i].value // 3_600_000_000_000) % 1000  # stable per bar
        lines.append(
            f"{open_t[i]},{o!r},{h!r},{lo!r},{c!r},{v!r},{close_t[i]},{qv!r},{trades},"
            f"{v / 2!r},{qv / 2!r},0"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def write_ohlcv_csv(frame: pd.DataFrame, path: Path, *, descending: bool = False) -> Path:
    out = frame.reset_index().rename(columns={"open_time": "timestamp"})
    out["timestamp"] = out["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")
    if descending:
        out = out.iloc[::-1]
    out.to_csv(path, index=False)
    return path


# Tiny hyperparameters per registered model: every model trains in about a second.
COMMON_TINY = {
    "batch_size": 16,
    "input_chunk_length": 12,
    "output_chunk_length": 1,
    "n_epochs": 1,
    "learning_rate": 1e-3,
}
TINY_PARAMS: dict[str, dict] = {
    "gru": {"hidden_dim": 8, "n_rnn_layers": 1, "dropout": 0.0},
    "lstm": {"hidden_dim": 8, "n_rnn_layers": 1, "dropout": 0.0},
    "transformer": {
        "d_model": 8,
        "nhead": 2,
        "num_encoder_layers": 1,
        "num_decoder_layers": 1,
        "dim_feedforward": 16,
        "dropout": 0.0,
    },
    "tcn": {"kernel_size": 3, "num_filters": 8, "dilation_base": 2, "dropout": 0.0},
    "nbeats": {"num_stacks": 2, "num_blocks": 1, "num_layers": 1, "layer_widths": 16},
    "nhits": {"num_stacks": 2, "num_blocks": 1, "num_layers": 1, "layer_widths": 16},
    "tft": {"hidden_size": 8, "lstm_layers": 1, "num_attention_heads": 2},
    "tide": {
        "hidden_size": 16,
        "num_encoder_layers": 1,
        "num_decoder_layers": 1,
        "decoder_output_dim": 8,
    },
    "tsmixer": {"hidden_size": 8, "ff_size": 8, "num_blocks": 1},
    "dlinear": {"kernel_size": 5},
    "nlinear": {},
    # the regression models: no batch size, epochs or optimiser (see tiny_params)
    "linear": {},
    "lightgbm": {"n_estimators": 10, "num_leaves": 4},
}
#: The keys of COMMON_TINY a regression model (no torch) takes.
REGRESSION_TINY_KEYS = ("input_chunk_length", "output_chunk_length")


def tiny_params(model_name: str, **overrides: Any) -> dict:
    """Tiny hyperparameters for a registered model, with ``overrides`` over them.

    An override of None removes the key (e.g. ``n_epochs=None``: the caller's max_epochs
    decides how long to train).
    """
    from kallos_models.modelling.zoo import get_spec

    common = dict(COMMON_TINY)
    if not get_spec(model_name).deep:
        common = {k: v for k, v in common.items() if k in REGRESSION_TINY_KEYS}
    params = {**common, **TINY_PARAMS[model_name], **overrides}
    return {k: v for k, v in params.items() if v is not None}


def train_sqlite_bundle(
    root: Path, csv: Path, params: Mapping[str, Any], *, db_name: str = "kallos.db", **fields: Any
) -> tuple[Any, Any]:
    """Ingest ``csv`` as BTC 1d into a SQLite database in ``root`` and train a 1-epoch GRU
    bundle (seed 0, CPU) into ``root / "models"``; ``fields`` are more Settings
    (``train_end_date``, ``test_start_date``, ...). Returns ``(settings, TrainResult)``."""
    from kallos_models.config import Settings
    from kallos_models.data import db, ingest
    from kallos_models.stages.train import train_model

    url = f"sqlite:///{(root / db_name).as_posix()}"
    engine = db.create_db_engine(url)
    ingest.ingest_file(engine, "BTC", "1d", csv)
    engine.dispose()
    settings = Settings(
        db_url=url,
        asset_id="BTC",
        timeframe="1d",
        model_name="gru",
        max_epochs=1,
        accelerator="cpu",
        output_path=str(root / "models"),
        seed=0,
        **fields,
    )
    return settings, train_model(settings, dict(params))


def cpu_trainer_kwargs() -> dict:
    """Fresh Lightning kwargs for a CPU trainer, as the package builds them."""
    from kallos_models.modelling.fitting import build_trainer_kwargs

    return build_trainer_kwargs(accelerator="cpu")


# -- the CLI -------------------------------------------------------------------------------


def run_cli(*args: str, quiet: bool = True, env: Mapping[str, str] | None = None):
    """``kallos-run [-q] ARGS`` in-process; exceptions the CLI does not handle propagate."""
    from click.testing import CliRunner

    from kallos_models.cli import cli

    argv = ["-q", *args] if quiet else list(args)
    return CliRunner().invoke(cli, argv, env=env, catch_exceptions=False)


def run_cli_json(*args: str, quiet: bool = True, env: Mapping[str, str] | None = None) -> Any:
    """run_cli that must exit 0 (the output in the failure message); returns stdout's JSON."""
    result = run_cli(*args, quiet=quiet, env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_error(result, *needles: str, code: int = 1) -> str:
    """A CLI result that failed the way a user mistake must: the exit code, one `Error:` line
    on stderr holding every needle, and no traceback. Returns that line."""
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def record_fit_ends(monkeypatch: Any) -> list[pd.Timestamp]:
    """Patch FeaturePreprocessor.fit to record the last row of every frame it is fitted on;
    returns the (growing) list."""
    from kallos_models.modelling.preprocessing import FeaturePreprocessor

    seen: list[pd.Timestamp] = []
    real_fit = FeaturePreprocessor.fit

    def recording_fit(self: FeaturePreprocessor, train: pd.DataFrame) -> FeaturePreprocessor:
        seen.append(pd.Timestamp(train.index.max()))
        return real_fit(self, train)

    monkeypatch.setattr(FeaturePreprocessor, "fit", recording_fit)
    return seen
