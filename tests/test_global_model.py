"""Global models: one model over a basket of assets, each scaled on its own training rows."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

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
STARTS = {"BTC": "2020-01-01", "ETH": "2020-02-15", "SOL": "2020-04-01"}
ENDS = {"BTC": "2021-11-26", "ETH": "2021-11-25", "SOL": "2021-11-24"}
LENGTHS = {a: (pd.Timestamp(ENDS[a]) - pd.Timestamp(STARTS[a])).days + 1 for a in STARTS}
TRAIN_END = pd.Timestamp("2021-10-31")
TEST_START, TEST_END = "2021-11-02", "2021-11-20"


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
        for got, own in zip(_fitted_state(member), _fitted_state(alone), strict=True):
            np.testing.assert_allclose(got, own, rtol=1e-12)
        # the test can tell a leak: a fit that saw the validation rows learnt other numbers
        # (the target's scale, the data-driven scalers; a fixed-range scaler learns none)
        leaked = _fitted_state(with_val)
        assert not np.allclose(_fitted_state(member)[0], leaked[0], rtol=1e-9)
        differ = [
            not np.allclose(g, w, rtol=1e-9)
            for g, w in zip(_fitted_state(member)[2:], leaked[2:], strict=True)
        ]
        assert sum(differ) >= 2, differ
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
    assert pooled["pooled"]["n"] == 3 * 19
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
    # what works on one asset's model only is refused, naming why
    window = ("--test-start-date", TEST_START, "--test-end-date", TEST_END)
    out = tmp_path / "eval"
    retrain = run_cli(
        "evaluate", "--model-name", "linear", "--asset-id", "BTC", "--model-path",
        trained["paths"]["model"], "--db-url", sqlite_url, "--retrain-every", "5",
        "--output-path", str(out), *window,
    )  # fmt: skip
    assert_error(retrain, "global model over BTC-ETH-SOL", "retraining backtest")
    late = run_cli(
        "evaluate", "--model-name", "linear", "--asset-id", "BTC,SOL", "--model-path",
        trained["paths"]["model"], "--db-url", sqlite_url, "--output-path", str(out),
        "--test-start-date", "2021-11-25", "--test-end-date", "2021-12-20",
    )  # fmt: skip
    assert_error(late, "SOL: asset 'SOL' (1d) has no bars between")
    assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith("."))


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


# -- tuning over a basket ------------------------------------------------------------------------


def test_every_fold_splits_all_assets_at_the_same_dates():
    from kallos_models.stages.tune.objective import Job, calendar, folds

    frames = {asset: _frame(asset) for asset in SCALES}
    common = calendar(frames)
    assert common.index[0] == max(f.index[0] for f in frames.values())
    job = Job(
        settings=SimpleNamespace(gap=1, asset_id="BTC"),  # type: ignore[arg-type]  # folds reads these
        frame=common, n_splits=3, val_size=20, min_train_size=60, max_lookback=30,
        storage=None, study_name="s", search_space=None, pruner=None,  # type: ignore[arg-type]
        show_progress=False, deadline=None, frames=frames,
    )  # fmt: skip
    cut = folds(job)
    assert len(cut) == 3
    for parts in cut:
        starts = {val.index[0] for _, val in parts.values()}
        assert len(starts) == 1 and {len(val) for _, val in parts.values()} == {20}
        for asset, (train, val) in parts.items():
            assert train.index[-1] == val.index[0] - 2 * DAY  # the gap: no validation row trained
            assert train.index[0] == frames[asset].index[0]  # each asset's whole history
    with pytest.raises(Exception, match="share no period"):
        calendar({"A": frames["BTC"].iloc[:50], "B": frames["SOL"].iloc[-50:]})


def test_a_basket_refuses_a_metric_in_price_units():
    from kallos_models.stage_settings import tune_settings

    basket = Settings(asset_id="BTC,ETH", tune_end_date="2021-10-31", db_url="sqlite://")
    assert tune_settings(basket).metric == "rmse_rel_naive"
    assert tune_settings(basket).study_name == "gru_BTC-ETH_1d"
    assert tune_settings(basket.replace(metric="smape")).metric == "smape"
    with pytest.raises(ConfigError, match="price units"):
        tune_settings(basket.replace(metric="rmse"))
    assert tune_settings(basket.replace(asset_id="BTC")).metric == "rmse"


def test_tune_train_evaluate_predict_a_global_model(db_url, tmp_path):
    import optuna

    _ingest(db_url, tmp_path)
    common = ("--asset-id", "BTC,ETH,SOL", "--db-url", db_url)
    summary = run_cli_json(
        "tune", "--model-name", "nlinear", *common, "--end-date", str(TRAIN_END.date()),
        "--n-trials", "2", "--max-epochs", "1", "--seed", "3",
        "--output-path", str(tmp_path / "tune"),
    )  # fmt: skip
    assert summary["study_name"] == "nlinear_BTC-ETH-SOL_1d"
    assert summary["metric"] == "rmse_rel_naive"
    params_path = Path(summary["params_path"])
    assert params_path.name == "nlinear_BTC-ETH-SOL_best_params.json"
    written = json.loads(params_path.read_text(encoding="utf-8"))
    assert written["assets"] == ["BTC", "ETH", "SOL"] and set(written["asset_scores"]) == set(
        SCALES
    )
    study = optuna.load_study(study_name=summary["study_name"], storage=db_url)
    for trial in study.trials:
        if trial.state != optuna.trial.TrialState.COMPLETE:
            continue
        per_asset = trial.user_attrs["asset_fold_scores"]
        assert set(per_asset) == set(SCALES)
        folds = len(trial.user_attrs["fold_scores"])
        for index in range(folds):  # a fold's score is the mean of its assets' ratios
            assert trial.user_attrs["fold_scores"][index] == pytest.approx(
                np.mean([per_asset[a][index] for a in SCALES])
            )
        assert trial.value == pytest.approx(np.mean(trial.user_attrs["fold_scores"]))

    trained = run_cli_json(
        "train", "--model-name", "nlinear", *common, "--end-date", str(TRAIN_END.date()),
        "--params-file", str(params_path), "--output-path", str(tmp_path / "models"),
        "--accelerator", "cpu",
    )  # fmt: skip
    model_path = trained["paths"]["model"]
    judged = run_cli_json(
        "evaluate", "--model-name", "nlinear", *common, "--model-path", model_path,
        "--test-start-date", TEST_START, "--test-end-date", TEST_END,
        "--output-path", str(tmp_path / "eval"),
    )  # fmt: skip
    assert set(judged["per_asset"]) == set(SCALES) and judged["pooled"]["n_assets"] == 3
    as_of = (BARS["SOL"].index[-1] + DAY + pd.Timedelta(hours=1)).isoformat()
    forecast = run_cli_json(
        "predict", "--model-path", model_path, "--db-url", db_url, "--as-of", as_of,
        "--max-age", "30d",
    )  # fmt: skip
    assert forecast["stored"]["new"] == 3


# -- the registry --------------------------------------------------------------------------------


def test_the_registry_lists_the_basket_and_gates_pooled_or_each_asset(
    sqlite_url, tmp_path, monkeypatch
):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KALLOS_TRACKING_ARTIFACT_LOCATION", str(tmp_path / "mlartifacts"))
    tracking = ("--tracking-uri", f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}")
    _ingest(sqlite_url, tmp_path)
    trained = _train(sqlite_url, tmp_path / "models", "linear", tiny_params("linear"), *tracking)
    assert trained["tracking"]["registered_model"] == "linear_BTC-ETH-SOL_1d"
    judged = run_cli_json(
        "evaluate", "--model-name", "linear", "--asset-id", "BTC,ETH,SOL", "--model-path",
        "models:/linear_BTC-ETH-SOL_1d/1", "--db-url", sqlite_url, *tracking,
        "--test-start-date", TEST_START, "--test-end-date", TEST_END,
        "--output-path", str(tmp_path / "eval"),
    )  # fmt: skip
    ratios = {a: judged["per_asset"][a]["rmse_ratio"] for a in SCALES}
    # evaluating part of the basket later does not replace the version's whole-basket numbers
    run_cli_json(
        "evaluate", "--model-name", "linear", "--asset-id", "SOL", "--model-path",
        "models:/linear_BTC-ETH-SOL_1d/1", "--db-url", sqlite_url, *tracking,
        "--test-start-date", TEST_START, "--test-end-date", TEST_END,
        "--output-path", str(tmp_path / "sol"),
    )  # fmt: skip
    rows = run_cli_json(
        "registry", "list", "--model-name", "linear", "--asset-id", "BTC,ETH,SOL", "--json",
        *tracking,
    )  # fmt: skip
    (row,) = rows
    assert row["basket"] == "BTC,ETH,SOL"
    assert row["rmse_ratio"] == pytest.approx(judged["pooled"]["rmse_ratio"])
    assert row["rmse"] is None  # prices of different assets do not add up
    assert {a: r["rmse_ratio"] for a, r in row["per_asset"].items()} == pytest.approx(ratios)

    # a limit between the best and the worst asset: the pooled mean may pass, each asset not
    limit = (max(ratios.values()) + min(ratios.values())) / 2
    promote = ("registry", "promote", "--model-name", "linear", "--asset-id", "BTC,ETH,SOL",
               "--version", "1", "--max-skill-ratio", f"{limit:.6f}", *tracking)  # fmt: skip
    worst = max(ratios, key=lambda a: ratios[a])
    each = run_cli(*promote, "--gate", "each-asset")
    line = assert_error(each, f"{worst}: rmse_ratio", code=3)
    assert min(ratios, key=lambda a: ratios[a]) + ":" not in line
    pooled_mean = float(np.mean(list(ratios.values())))
    pooled = run_cli(*promote)
    if pooled_mean <= limit:
        assert pooled.exit_code == 0, pooled.output
        assert json.loads(pooled.stdout)["version"] == 1
    else:
        assert_error(pooled, "rmse_ratio", code=3)


# -- compare -------------------------------------------------------------------------------------


def test_compare_ranks_global_models_per_asset_and_over_the_basket(sqlite_url, tmp_path):
    _ingest(sqlite_url, tmp_path)
    linear = _train(sqlite_url, tmp_path / "m1", "linear", tiny_params("linear"))
    lightgbm = _train(sqlite_url, tmp_path / "m2", "lightgbm", tiny_params("lightgbm"))
    params = tmp_path / "single.json"
    params.write_text(json.dumps(tiny_params("linear", input_chunk_length=6)), encoding="utf-8")
    single = run_cli_json(
        "train", "--model-name", "linear", "--asset-id", "ETH", "--end-date",
        str(TRAIN_END.date()), "--params-file", str(params), "--db-url", sqlite_url,
        "--output-path", str(tmp_path / "m3"),
    )  # fmt: skip
    window = ("--test-start-date", TEST_START, "--test-end-date", TEST_END, "--db-url", sqlite_url)
    paths = [linear["paths"]["model"], lightgbm["paths"]["model"], single["paths"]["model"]]
    # one asset of the basket, beside that asset's own model
    eth = run_cli_json("compare", *window, "--asset-id", "ETH",
                       "--output-path", str(tmp_path / "eth"),
                       *[a for p in paths for a in ("--model-path", p)])  # fmt: skip
    assert eth["asset_id"] == "ETH" and len(eth["leaderboard"]) == 3
    alone = run_cli_json(
        "evaluate", "--model-name", "linear", "--asset-id", "ETH", "--model-path", paths[0],
        "--output-path", str(tmp_path / "e"), *window,
    )  # fmt: skip
    row = next(r for r in eth["leaderboard"] if r["source"] == paths[0])
    assert row["rmse_ratio"] == pytest.approx(alone["per_asset"]["ETH"]["rmse_ratio"])
    # the whole basket: each asset's board, and the models ranked by their mean ratio
    pooled = run_cli_json("compare", *window, "--output-path", str(tmp_path / "all"),
                          "--model-path", paths[0], "--model-path", paths[1])  # fmt: skip
    assert pooled["assets"] == ["BTC", "ETH", "SOL"]
    for board in pooled["leaderboard"]:
        ratios = board["rmse_ratio"]
        assert board["mean_rmse_ratio"] == pytest.approx(np.mean(list(ratios.values())))
    means = [board["mean_rmse_ratio"] for board in pooled["leaderboard"]]
    assert means == sorted(means)
    written = {p.name for p in (tmp_path / "all").iterdir()}
    assert {"BTC-ETH-SOL_leaderboard.json", "SOL_leaderboard.png"} <= written
    # a single-asset model outside the asset asked for is refused, naming both
    refused = run_cli(
        "compare", *window, "--asset-id", "BTC", "--output-path", str(tmp_path / "no"),
        "--model-path", paths[0], "--model-path", paths[2],
    )  # fmt: skip
    assert_error(refused, "--asset-id is BTC", "a linear model of ETH")
    assert not (tmp_path / "no").exists() or not any((tmp_path / "no").iterdir())
