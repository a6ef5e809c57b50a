"""Global models: one model over a basket of assets, each scaled on its own training rows."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kallos_models.config import Settings, asset_list
from kallos_models.errors import ConfigError
from kallos_models.files import basket_name
from tests.helpers import (
    assert_error,
    make_ohlcv,
    run_cli,
    run_cli_json,
    tiny_params,
    write_binance_csv,
)

DAY = pd.Timedelta(days=1)
# three assets at scales orders of magnitude apart, of different lengths and start dates
SCALES = {"BTC": 30000.0, "ETH": 2000.0, "SOL": 40.0}
STARTS = {"BTC": "2021-01-01", "ETH": "2021-02-15", "SOL": "2021-04-01"}
LENGTHS = {"BTC": 330, "ETH": 285, "SOL": 240}
TRAIN_END = pd.Timestamp("2021-10-31")
TEST_START, TEST_END = "2021-11-01", "2021-11-20"


def _bars(asset: str) -> pd.DataFrame:
    bars = make_ohlcv(LENGTHS[asset], start=STARTS[asset], seed=len(asset) + ord(asset[0]))
    bars[["open", "high", "low", "close"]] *= SCALES[asset] / 100.0
    bars["volume"] *= SCALES[asset] / 1000.0
    return bars


BARS = {asset: _bars(asset) for asset in SCALES}


def _ingest(url: str, root: Path) -> None:
    for asset, bars in BARS.items():
        file = write_binance_csv(bars, root / f"{asset}.csv")
        run_cli_json("ingest", "--asset-id", asset, "--timeframe", "1d", "--file", str(file),
                     "--db-url", url)  # fmt: skip


# -- settings and names ----------------------------------------------------------------------


def test_asset_id_names_one_asset_or_a_basket():
    assert asset_list("BTC") == ("BTC",)
    assert asset_list(" BTC, ETH ,SOL") == ("BTC", "ETH", "SOL")
    assert asset_list(["BTC", "ETH"]) == ("BTC", "ETH")
    with pytest.raises(ConfigError, match="empty entry"):
        asset_list("BTC,,ETH")
    with pytest.raises(ConfigError, match="ETH more than once"):
        asset_list("BTC,ETH,ETH")
    assert Settings().replace(asset_id=["BTC", "SOL"]).asset_id == "BTC,SOL"


def test_basket_names_stay_short_and_distinct():
    assert basket_name(["BTC", "ETH", "SOL"]) == "BTC-ETH-SOL"
    assert basket_name(["BTC", "ETH"], "majors") == "majors"
    many = [f"COIN{i}" for i in range(20)]
    name = basket_name(many)
    assert name.startswith("COIN0-COIN1-COIN2-17more-") and len(name) < 40
    assert basket_name([*many[:-1], "OTHER"]) != name


def test_a_config_file_basket_is_a_list(tmp_path):
    from kallos_models.config import resolve_settings
    from kallos_models.stage_settings import train_settings

    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"asset_id": ["BTC", "ETH"], "train_end_date": "2021-10-31"}),
        encoding="utf-8",
    )
    stage = train_settings(resolve_settings({}, config_path=config, cwd=tmp_path, environ={}))
    assert stage.assets == ("BTC", "ETH") and stage.asset_id == "BTC-ETH"
    with pytest.raises(ConfigError, match="--run-name"):
        train_settings(Settings(asset_id="BTC", run_name="x", train_end_date="2021-10-31"))


# -- no leakage --------------------------------------------------------------------------------


def _frame(asset: str) -> pd.DataFrame:
    from kallos_models.data.features import compute_features

    bars = BARS[asset]
    full = pd.concat([bars, compute_features(bars)], axis=1)
    frame = full[~full["warmup"]].drop(columns="warmup").asfreq("1D")
    frame["taker_buy_base_asset_volume"] = frame["volume"] / 2
    return frame


def _fitted_state(pre) -> list[np.ndarray]:
    """Every number a preprocessor learnt: the target scaler's and each group pipeline's."""
    state = [pre.target_scaler.mean_, pre.target_scaler.scale_]
    for group, columns in pre.feature_groups.items():
        probe = np.linspace(1.0, 50.0, 7 * len(columns)).reshape(7, len(columns))
        state.append(np.asarray(pre.pipelines[group].transform(probe), dtype="float64"))
    return state


def test_no_asset_scaler_sees_another_assets_rows_or_a_validation_row():
    from kallos_models.modelling.basket import prepare_basket
    from kallos_models.modelling.preprocessing import FeaturePreprocessor
    from kallos_models.stage_settings import FeatureSettings

    features = FeatureSettings.from_settings(Settings())
    split = pd.Timestamp("2021-09-30")  # one calendar split for every asset
    frames = {asset: _frame(asset) for asset in SCALES}
    parts = {a: (f.loc[:split], f.loc[split + DAY :]) for a, f in frames.items()}
    prepared = prepare_basket(parts, features)
    basket = prepared.preprocessor
    for asset, (train, val) in parts.items():
        member = basket.member(asset)
        assert member.train_start == train.index[0] and member.train_end == split
        assert member.n_train_rows == len(train)
        groups = member.feature_groups
        alone = FeaturePreprocessor(groups, group_scalers=member.group_scalers).fit(train)
        with_val = FeaturePreprocessor(groups, group_scalers=member.group_scalers).fit(
            pd.concat([train, val])
        )
        for got, own, leaked in zip(
            _fitted_state(member), _fitted_state(alone), _fitted_state(with_val), strict=True
        ):
            np.testing.assert_allclose(got, own, rtol=1e-12)
            assert not np.allclose(got, leaked, rtol=1e-9)  # the test can tell a leak
        for other in SCALES:
            if other != asset:
                assert not np.allclose(
                    _fitted_state(member)[0], _fitted_state(basket.member(other))[0]
                )
    # every series keeps its own length and start: none is cut to the shortest
    starts = {s.start_time() for s in prepared.train_target}
    assert len(starts) == 3 and len({len(s) for s in prepared.train_target}) == 3
    # the asset's identity rides on its target series, for training and forecasting alike
    statics = prepared.train_target[1].static_covariates
    assert list(statics.columns) == ["asset_BTC", "asset_ETH", "asset_SOL"]
    assert statics.to_numpy().tolist() == [[0.0, 1.0, 0.0]]


# -- tune -> train -> evaluate -> predict from the command line --------------------------------


def _train(url: str, out: Path, model: str, params: dict, *extra: str) -> dict:
    params_file = out.parent / f"{model}_params.json"
    params_file.write_text(json.dumps(params), encoding="utf-8")
    return run_cli_json(
        "train", "--model-name", model, "--asset-id", "BTC,ETH,SOL",
        "--end-date", str(TRAIN_END.date()), "--params-file", str(params_file),
        "--db-url", url, "--output-path", str(out), "--seed", "0",
        "--accelerator", "cpu", *extra,
    )  # fmt: skip


def test_global_gru_trains_evaluates_and_predicts_per_asset(db_url, tmp_path):
    from kallos_models.data.datasets import load_features_from_db
    from kallos_models.modelling import bundles
    from kallos_models.modelling.preprocessing import FeaturePreprocessor

    _ingest(db_url, tmp_path)
    out = tmp_path / "models"
    trained = _train(db_url, out, "gru", tiny_params("gru", output_chunk_length=2))
    assert trained["asset_id"] == "BTC-ETH-SOL"
    model_path = trained["paths"]["model"]
    assert Path(model_path).name == "gru_BTC-ETH-SOL.pt"
    manifest = json.loads(Path(trained["paths"]["manifest"]).read_text(encoding="utf-8"))
    record = manifest["basket"]
    assert record["assets"] == ["BTC", "ETH", "SOL"]
    assert record["static_covariates"] == ["asset_BTC", "asset_ETH", "asset_SOL"]
    for asset, bars in BARS.items():
        own = record["per_asset"][asset]
        assert own["train_end"] == TRAIN_END.isoformat()
        assert own["train_start"] > bars.index[0].isoformat()  # indicator warm-up dropped
    assert manifest["train_rows"] == sum(r["train_rows"] for r in record["per_asset"].values())

    # the saved scaler of each asset is a fit on that asset's own training rows alone
    loaded = bundles.load_bundle(model_path)
    assert loaded.model.uses_static_covariates  # the GRU reads the asset's identity
    for asset in SCALES:
        rows = load_features_from_db(asset, TRAIN_END, db_url)
        member = loaded.preprocessor.member(asset)
        alone = FeaturePreprocessor(member.feature_groups).fit(rows)
        for got, own in zip(_fitted_state(member), _fitted_state(alone), strict=True):
            np.testing.assert_allclose(got, own, rtol=1e-12)

    window = ("--test-start-date", TEST_START, "--test-end-date", TEST_END)
    ev_dir = tmp_path / "eval"
    pooled = run_cli_json(
        "evaluate", "--model-name", "gru", "--asset-id", "BTC,ETH,SOL", "--model-path",
        model_path, "--db-url", db_url, "--output-path", str(ev_dir), *window,
    )  # fmt: skip
    assert pooled["basket"] == "BTC-ETH-SOL" and pooled["assets"] == ["BTC", "ETH", "SOL"]
    ratios = [pooled["per_asset"][a]["rmse_ratio"] for a in SCALES]
    assert pooled["pooled"]["rmse_ratio"] == pytest.approx(np.mean(ratios))
    assert pooled["pooled"]["n"] == 3 * 20
    assert {p.name for p in ev_dir.iterdir()} == {
        f"{name}_evaluation_{kind}"
        for name in ("BTC", "ETH", "SOL", "BTC-ETH-SOL")
        for kind in ("metrics.json", "plot.png")
    }
    # one asset alone is judged exactly as within the basket
    alone = run_cli_json(
        "evaluate", "--model-name", "gru", "--asset-id", "ETH", "--model-path", model_path,
        "--db-url", db_url, "--output-path", str(tmp_path / "eth"), *window,
    )  # fmt: skip
    assert alone["assets"] == ["ETH"]
    assert alone["per_asset"]["ETH"]["rmse"] == pytest.approx(pooled["per_asset"]["ETH"]["rmse"])
    outside = run_cli(
        "evaluate", "--model-name", "gru", "--asset-id", "BTC,DOGE", "--model-path", model_path,
        "--db-url", db_url, "--output-path", str(tmp_path / "none"), *window,
    )  # fmt: skip
    assert_error(outside, "DOGE is not in the basket", "BTC, ETH, SOL")
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())

    as_of = (BARS["SOL"].index[-1] + DAY + pd.Timedelta(hours=1)).isoformat()
    one = run_cli_json(
        "predict", "--model-path", model_path, "--asset-id", "SOL", "--horizon", "2",
        "--as-of", as_of, "--db-url", db_url,
    )  # fmt: skip
    assert one["asset_id"] == "SOL" and one["basket"] == "BTC-ETH-SOL"
    assert one["origin"]["time"] == BARS["SOL"].index[-1].isoformat()
    assert one["stored"]["new"] == 2
    everyone = run_cli_json(
        "predict", "--model-path", model_path, "--as-of", as_of, "--db-url", db_url,
        "--max-age", "30d",
    )  # fmt: skip
    assert everyone["assets"] == ["BTC", "ETH", "SOL"]
    assert everyone["stored"] == {"table": "forecasts", "new": 2, "existing": 1}
    for asset in SCALES:  # each in its own price scale
        close = float(BARS[asset]["close"].iloc[-1])
        step = everyone["per_asset"][asset]["steps"][0]
        assert 0.5 * close < step["forecast"] < 2 * close
    refused = run_cli(
        "predict", "--model-path", model_path, "--asset-id", "ADA", "--as-of", as_of,
        "--db-url", db_url,
    )  # fmt: skip
    assert_error(refused, "ADA is not in the basket", "BTC, ETH, SOL")


def test_a_model_without_static_covariates_learns_from_the_scaled_series(sqlite_url, tmp_path):
    _ingest(sqlite_url, tmp_path)
    out = tmp_path / "models"
    trained = _train(sqlite_url, out, "nbeats", tiny_params("nbeats"), "--run-name", "trio")
    assert Path(trained["paths"]["model"]).name == "nbeats_trio.pt"
    manifest = json.loads(Path(trained["paths"]["manifest"]).read_text(encoding="utf-8"))
    assert manifest["basket"]["static_covariates"] is None
    assert manifest["basket"]["name"] == "trio"
    with open(trained["paths"]["scaler"], "rb") as handle:
        assert pickle.load(handle).members["BTC"].static_covariates is None
    result = run_cli_json(
        "evaluate", "--model-name", "nbeats", "--asset-id", "trio", "--model-path",
        trained["paths"]["model"], "--db-url", sqlite_url, "--output-path", str(tmp_path / "e"),
        "--test-start-date", TEST_START, "--test-end-date", TEST_END,
    )  # fmt: skip
    assert result["assets"] == ["BTC", "ETH", "SOL"]


def test_a_regression_model_reads_the_asset_identity(sqlite_url, tmp_path):
    _ingest(sqlite_url, tmp_path)
    trained = _train(sqlite_url, tmp_path / "models", "linear", tiny_params("linear"))
    manifest = json.loads(Path(trained["paths"]["manifest"]).read_text(encoding="utf-8"))
    assert manifest["basket"]["static_covariates"] == ["asset_BTC", "asset_ETH", "asset_SOL"]
    from kallos_models.modelling import bundles

    model = bundles.load_bundle(trained["paths"]["model"]).model
    assert model.uses_static_covariates


def test_what_a_basket_cannot_do_yet_is_refused_before_any_data(sqlite_url, tmp_path):
    params = tmp_path / "p.json"
    params.write_text(json.dumps(tiny_params("gru")), encoding="utf-8")
    common = ("--asset-id", "BTC,ETH", "--end-date", "2021-10-31", "--db-url", sqlite_url)
    conformal = run_cli("train", "--params-file", str(params), "--conformal", *common)
    assert_error(conformal, "--conformal is not available for a global model")
    ensemble = run_cli("train", "--model-name", "ensemble", "--members", "linear,lightgbm",
                       *common)  # fmt: skip
    assert_error(ensemble, "an ensemble is trained on one asset")
    ingest = run_cli("ingest", "--asset-id", "BTC,ETH", "--file", str(params),
                     "--db-url", sqlite_url)  # fmt: skip
    assert_error(ingest, "comma")
