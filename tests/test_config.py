from __future__ import annotations

import json
from pathlib import Path

import pytest

from kallos_models.config import (
    DEFAULT_FEATURE_GROUPS,
    SETTING_KEYS,
    parse_date,
    resolve_settings,
    timeframe_to_freq,
    timeframe_to_timedelta,
)
from kallos_models.data.db import mask_url, url_from_db_kwargs
from kallos_models.errors import ConfigError

DB_KWARGS = {
    "postgres_user": "kallos",
    "postgres_password": "s3cret",
    "postgres_host": "db.example",
    "postgres_port": "5433",
    "postgres_db": "market",
}


def test_defaults_use_sqlite_in_working_directory(tmp_path: Path) -> None:
    s = resolve_settings({}, cwd=tmp_path, environ={})
    assert s.db_url == f"sqlite:///{(tmp_path / 'kallos.db').as_posix()}"
    assert s.timeframe == "1d" and s.n_trials == 20 and s.target_transform == "log_return"
    assert s.feature_groups == DEFAULT_FEATURE_GROUPS


def test_precedence_flags_over_env_over_dotenv_over_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"asset_id": "CFG", "n_trials": 3, "timeframe": "4h", "model_name": "lstm"})
    )
    (tmp_path / ".env").write_text("KALLOS_N_TRIALS=5\nKALLOS_TIMEFRAME=2h\n")
    s = resolve_settings({}, cwd=tmp_path, environ={"KALLOS_N_TRIALS": "7"})
    assert s.asset_id == "CFG"  # only in config.json
    assert s.model_name == "lstm"
    assert s.timeframe == "2h"  # .env beats config.json
    assert s.n_trials == 7  # the process environment beats .env
    s = resolve_settings(
        {"n_trials": 9, "asset_id": None}, cwd=tmp_path, environ={"KALLOS_N_TRIALS": "7"}
    )
    assert s.n_trials == 9 and s.asset_id == "CFG"  # None flags do not override


def test_unknown_config_key_is_named_with_valid_keys(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"asset_id": "BTC", "n_trail": 3}))
    with pytest.raises(ConfigError) as err:
        resolve_settings({}, cwd=tmp_path, environ={})
    assert "n_trail" in str(err.value) and "n_trials" in str(err.value)


def test_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_settings({}, config_path=tmp_path / "nope.json", cwd=tmp_path, environ={})


def test_bad_value_types_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_trials"):
        resolve_settings({}, cwd=tmp_path, environ={"KALLOS_N_TRIALS": "many"})
    with pytest.raises(ConfigError, match="log_return"):
        resolve_settings({"target_transform": "levels"}, cwd=tmp_path, environ={})
    with pytest.raises(ConfigError, match="at least 1"):
        resolve_settings({"n_trials": 0}, cwd=tmp_path, environ={})
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        resolve_settings({"train_end_date": "yesterday-ish"}, cwd=tmp_path, environ={})


def test_env_json_values(tmp_path: Path) -> None:
    groups = {"volume_features": ["volume"]}
    s = resolve_settings({}, cwd=tmp_path, environ={"KALLOS_FEATURE_GROUPS": json.dumps(groups)})
    assert s.feature_groups == groups


def test_db_kwargs_from_config_env_and_seed_json_dotenv(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"db_kwargs": DB_KWARGS}))
    s = resolve_settings({}, cwd=tmp_path, environ={})
    assert s.db_kwargs == DB_KWARGS and s.db_url is None
    # POSTGRES_* variables outrank config.json
    env = {k.upper(): v for k, v in DB_KWARGS.items()} | {"POSTGRES_DB": "other"}
    assert resolve_settings({}, cwd=tmp_path, environ=env).db_kwargs["postgres_db"] == "other"
    # a KALLOS_DB_URL outranks everything below the flags
    s = resolve_settings({}, cwd=tmp_path, environ=env | {"KALLOS_DB_URL": "sqlite:///x.db"})
    assert s.db_url == "sqlite:///x.db"
    # the seed's .env: one JSON object of the five keys
    (tmp_path / "config.json").unlink()
    (tmp_path / ".env").write_text(json.dumps(DB_KWARGS))
    assert resolve_settings({}, cwd=tmp_path, environ={}).db_kwargs == DB_KWARGS


def test_db_kwargs_url_and_masking() -> None:
    url = url_from_db_kwargs(DB_KWARGS)
    assert url.port == 5433 and url.database == "market" and url.host == "db.example"
    shown = mask_url(url)
    assert "s3cret" not in shown and "***" in shown
    assert "pw" not in mask_url("postgresql://u:pw@h/db")
    with pytest.raises(ConfigError, match="postgres_db"):
        url_from_db_kwargs({"postgres_user": "u"})


def test_every_key_in_repository_config_is_valid() -> None:
    repo_config = Path(__file__).resolve().parents[1] / "config.json"
    data = json.loads(repo_config.read_text())
    assert set(k for k in data if not k.startswith("_")) <= set(SETTING_KEYS)
    resolve_settings({}, config_path=repo_config, environ={})


def test_env_example_lists_every_setting() -> None:
    text = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    for key in SETTING_KEYS:
        assert f"KALLOS_{key.upper()}" in text, key
    for key in (
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_HOST",
        "POSTGRES_PORT",
        "POSTGRES_DB",
    ):
        assert key in text


def test_dates_and_timeframes() -> None:
    assert str(parse_date("2024-06-30", "d")) == "2024-06-30 00:00:00"
    assert str(parse_date("2024-06-30T02:00:00+02:00", "d")) == "2024-06-30 00:00:00"
    with pytest.raises(ConfigError, match="test_end_date"):
        parse_date("31/31/2024", "test_end_date")
    assert timeframe_to_timedelta("4h").total_seconds() == 4 * 3600
    assert timeframe_to_freq("1d") == "1D" and timeframe_to_freq("15m") == "15min"
    with pytest.raises(ConfigError, match="bar size"):
        timeframe_to_timedelta("4x")


def test_stray_postgres_variable_does_not_replace_the_database(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"db_url": "sqlite:///cfg.db"}))
    s = resolve_settings({}, cwd=tmp_path, environ={"POSTGRES_HOST": "elsewhere"})
    assert s.db_url == "sqlite:///cfg.db" and s.db_kwargs is None


def test_errors_name_the_source_of_a_bad_value(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"n_trials": "many"}))
    with pytest.raises(ConfigError, match="config.json"):
        resolve_settings({}, cwd=tmp_path, environ={})
    (tmp_path / "config.json").unlink()
    with pytest.raises(ConfigError, match="environment"):
        resolve_settings({}, cwd=tmp_path, environ={"KALLOS_MAX_EPOCHS": "x"})


def test_mask_url_hides_a_password_containing_at() -> None:
    assert (
        mask_url("postgresql://kallos:p@ss@127.0.0.1:1/db")
        == "postgresql://kallos:***@127.0.0.1:1/db"
    )


@pytest.mark.parametrize(
    ("written", "normal"),
    [("24h", "1d"), ("1440m", "1d"), ("0001d", "1d"), ("7d", "1w"), ("120m", "2h"), ("90m", "90m")],
)
def test_equal_timeframes_have_one_spelling(written: str, normal: str) -> None:
    from kallos_models.config import normalise_timeframe

    assert normalise_timeframe(written) == normal
    assert resolve_settings({"timeframe": written}, environ={}).timeframe == normal


@pytest.mark.parametrize("absurd", ["99999999999999999999d", "53w", "600000h"])
def test_an_absurd_timeframe_is_a_config_error_not_an_overflow(absurd: str) -> None:
    with pytest.raises(ConfigError, match="longer than the longest bar size accepted"):
        timeframe_to_timedelta(absurd)
    with pytest.raises(ConfigError, match="52w"):
        resolve_settings({"timeframe": absurd}, environ={})


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("accelerator", "tpu9", "accelerator 'tpu9' is not one of auto, cpu, gpu"),
        ("precision", "17-mixed", "precision '17-mixed' is not one of 64-true"),
        ("devices", "two", "devices 'two' is not auto"),
    ],
)
def test_trainer_choices_are_checked_where_they_enter(key: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        resolve_settings({key: value}, environ={})
    assert (
        resolve_settings({"precision": "bf16-mixed", "devices": "0,1"}, environ={}).devices == "0,1"
    )
