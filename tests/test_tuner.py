"""tuner: real Optuna studies of real tiny Darts models, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from kallos_models import tuner
from kallos_models.config import Settings, resolve_settings
from kallos_models.data import db, ingest
from kallos_models.errors import ConfigError, DatabaseError, DataError, ModelError
from kallos_models.stages.tune.pruning import SameStepMedianPruner, Steps
from tests.helpers import make_ohlcv, record_fit_ends, write_binance_csv

N_BARS = 400  # 351 rows after the SMA-50 warm-up: 3 folds of 46 bars, first training part 213
BARS = make_ohlcv(N_BARS)
END = str(BARS.index[-1].date())
SCHEMA = "optuna_s"
ROOT = Path(__file__).resolve().parents[1]


def tiny_space(trial: Any, timeframe: str) -> dict[str, Any]:
    """A test-only search space: a GRU of width 8, a short lookback; ~0.5 s per trial."""
    return {
        "hidden_dim": 8,
        "n_rnn_layers": 1,
        "dropout": 0.0,
        "batch_size": 32,
        "input_chunk_length": trial.suggest_int("input_chunk_length", 8, 16),
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True),
    }


def slow_space(trial: Any, timeframe: str) -> dict[str, Any]:
    """tiny_space, but trials from number $TUNER_TEST_SLOW_FROM on hang (to be killed)."""
    params = tiny_space(trial, timeframe)
    if trial.number >= int(os.environ.get("TUNER_TEST_SLOW_FROM", "0")):
        time.sleep(300)
    return params


def good_then_bad_space(trial: Any, timeframe: str) -> dict[str, Any]:
    """Trial 0 trains sensibly; later trials use a learning rate of 1.0 (clearly worse)."""
    return {
        "hidden_dim": 8,
        "n_rnn_layers": 1,
        "dropout": 0.0,
        "batch_size": 32,
        "input_chunk_length": 10,
        "learning_rate": 1e-3 if trial.number == 0 else 1.0,
    }


def load_bars(url: str, tmp_path: Path, n_bars: int = N_BARS) -> None:
    engine = db.create_db_engine(url)
    csv = write_binance_csv(make_ohlcv(n_bars), tmp_path / "btc.csv")
    ingest.ingest_file(engine, "BTC", "1d", csv)
    engine.dispose()


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "db_url": url,
        "asset_id": "BTC",
        "model_name": "gru",
        "tune_end_date": END,
        "n_trials": 2,
        "max_epochs": 2,
        **overrides,
    }
    return resolve_settings(values)


def pg_states(url: str, schema: str = SCHEMA) -> dict[int, str]:
    """Trial number -> state, read straight from Optuna's tables."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT number, state FROM {schema}.trials")).all()
    except sa.exc.ProgrammingError:
        return {}
    finally:
        engine.dispose()
    return {int(n): str(s) for n, s in rows}


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


@pytest.fixture
def sqlite_data(sqlite_url: str, tmp_path: Path) -> str:
    load_bars(sqlite_url, tmp_path)
    return sqlite_url


@pytest.fixture
def pg_data(pg_url: str, tmp_path: Path) -> str:
    load_bars(pg_url, tmp_path)
    return pg_url


@pytest.fixture
def db_data(db_url: str, tmp_path: Path) -> str:
    """The bars on SQLite and on PostgreSQL; the study is stored in the same database."""
    load_bars(db_url, tmp_path)
    return db_url


# --------------------------------------------------------------------------------------------
# Both backends: params file, resume, exact trial counts, pruning
# --------------------------------------------------------------------------------------------


def test_tune_writes_params_and_resumes_exactly(db_data: str, tmp_path: Path) -> None:
    from kallos_models.stages.train import read_params_file

    settings = settings_for(db_data, output_path=str(tmp_path / "out"))
    result = tuner.tune(settings, search_space=tiny_space)
    assert finished(result.study) == 2 and result.summary["n_new_trials"] == 2
    path = tmp_path / "out" / "gru_BTC_best_params.json"
    assert result.params_path == path and path.is_file()
    data = json.loads(path.read_text())
    for key in (
        "model_name",
        "asset_id",
        "timeframe",
        "params",
        "n_epochs",
        "value",
        "metric",
        "trial_counts",
        "study_name",
        "storage",
        "best_trial",
        "end_date",
    ):
        assert key in data, key
    best = result.study.best_trial
    assert data["value"] == pytest.approx(best.value) and data["best_trial"] == best.number
    assert data["study_name"] == "gru_BTC_1d" and data["metric"] == "rmse"
    assert data["trial_counts"]["COMPLETE"] == 2
    assert data["params"]["hidden_dim"] == 8 and "learning_rate" in data["params"]
    assert data["n_epochs"] == best.user_attrs["n_epochs"] >= 1
    params, n_epochs = read_params_file(path)  # the trainer accepts the file as written
    assert params == data["params"] and n_epochs == data["n_epochs"]
    # the tuning report
    names = {p.name for p in result.report_paths}
    assert "gru_BTC_optimization_history.png" in names
    assert all(p.stat().st_size > 1000 for p in result.report_paths)
    # each trial reported one score per fold (and each epoch's validation loss) and its folds
    fold_steps = [Steps(epochs=2, n_splits=3).fold(k) for k in range(3)]
    for trial in result.study.trials:
        assert [trial.intermediate_values[s] for s in fold_steps] == trial.user_attrs["fold_scores"]
        assert len(trial.user_attrs["fold_scores"]) == 3
        assert trial.user_attrs["fold_val_sizes"] == [46, 46, 46]
        assert trial.value == pytest.approx(sum(trial.user_attrs["fold_scores"]) / 3)
        assert all(1 <= e <= 2 for e in trial.user_attrs["epochs_run"])

    again = tuner.tune(settings, search_space=tiny_space)
    assert again.summary["n_new_trials"] == 0 and len(again.study.trials) == 2
    more = tuner.tune(settings.replace(n_trials=3), search_space=tiny_space)
    assert more.summary["n_new_trials"] == 1
    assert len(more.study.trials) == 3 and finished(more.study) == 3
    assert more.summary["trial_counts"]["COMPLETE"] == 3

    rows = tuner.list_studies(db_data)
    assert [r["name"] for r in rows] == ["gru_BTC_1d"]
    assert rows[0]["trials"]["COMPLETE"] == 3 and rows[0]["model_name"] == "gru"
    assert rows[0]["best_value"] == pytest.approx(more.study.best_value)

    # resuming with another metric would mix incomparable values
    with pytest.raises(ConfigError, match="metric 'rmse'"):
        tuner.tune(settings.replace(metric="mae", n_trials=4), search_space=tiny_space)


def test_no_fold_preprocessor_sees_validation_rows(
    sqlite_data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = record_fit_ends(monkeypatch)
    result = tuner.tune(settings_for(sqlite_data), search_space=tiny_space)
    trials = result.study.trials
    n_folds = 3
    assert len(seen) == 1 + len(trials) * n_folds  # one check before the first trial
    for trial_index, trial in enumerate(trials):
        val_starts = [pd.Timestamp(t) for t in trial.user_attrs["fold_val_starts"]]
        fits = seen[1 + trial_index * n_folds : 1 + (trial_index + 1) * n_folds]
        for fit_max, val_start in zip(fits, val_starts, strict=True):
            assert fit_max < val_start
            # all training rows up to the gap (default: the horizon, 1 bar), no more
            assert fit_max == val_start - pd.Timedelta("2D")


def test_a_worse_trial_is_pruned_between_folds(db_data: str) -> None:
    steps = Steps(epochs=2, n_splits=3)  # a warm-up of every epoch: only fold scores prune
    pruner = SameStepMedianPruner(steps, n_startup_trials=1, warmup_epochs=2)
    result = tuner.tune(settings_for(db_data), search_space=good_then_bad_space, pruner=pruner)
    first, second = result.study.trials
    assert first.state == TrialState.COMPLETE
    assert second.state == TrialState.PRUNED
    assert max(second.intermediate_values) == steps.fold(0)  # stopped after its first fold
    fold = steps.fold(0)
    assert second.intermediate_values[fold] > first.intermediate_values[fold]
    assert result.summary["trial_counts"]["PRUNED"] == 1 and result.summary["n_finished"] == 2
    data = json.loads(Path(result.params_path).read_text())
    assert data["best_trial"] == 0 and data["params"]["learning_rate"] == 1e-3


# --------------------------------------------------------------------------------------------
# Bad input: clear errors before any trial
# --------------------------------------------------------------------------------------------


def test_bad_inputs_fail_before_any_trial(sqlite_data: str, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        tuner.tune(settings_for(sqlite_data, tune_end_date="2020-06-30"), search_space=tiny_space)
    assert "2020-06-30" in str(err.value) and "data covers" in str(err.value)

    with pytest.raises(ConfigError, match="PostgreSQL"):
        tuner.tune(settings_for(sqlite_data, workers=2), search_space=tiny_space)
    with pytest.raises(ConfigError, match="needs a PostgreSQL storage"):
        tuner.tune(settings_for(sqlite_data, optuna_schema="optuna"), search_space=tiny_space)
    with pytest.raises(ModelError, match="unknown model 'grux'; available:"):
        tuner.tune(settings_for(sqlite_data, model_name="grux"))
    with pytest.raises(ConfigError, match="end date"):
        tuner.tune(settings_for(sqlite_data, tune_end_date=None))
    with pytest.raises(ConfigError, match="not a date"):
        settings_for(sqlite_data, tune_end_date="2021-13-45")
    with pytest.raises(ConfigError, match="n_trials must be at least 1"):
        settings_for(sqlite_data, n_trials=0)

    secret_url = "postgresql://u:secret@127.0.0.1:1/x"
    with pytest.raises(DatabaseError) as err:
        tuner.tune(settings_for(sqlite_data, storage_url=secret_url), search_space=tiny_space)
    assert "secret" not in str(err.value) and "***" in str(err.value)
    with pytest.raises(DatabaseError) as err:
        tuner.tune(settings_for(secret_url), search_space=tiny_space)
    assert "secret" not in str(err.value)
    with pytest.raises(DatabaseError) as err:
        tuner.list_studies(secret_url)
    assert "secret" not in str(err.value) and "***" in str(err.value)

    # nothing was tuned, nothing written
    assert tuner.list_studies(sqlite_data) == []
    assert not list(tmp_path.glob("*_best_params.json"))


def test_too_little_data_says_how_much_is_needed(db_url: str, tmp_path: Path) -> None:
    load_bars(db_url, tmp_path, n_bars=250)  # 201 rows after warm-up
    with pytest.raises(DataError) as err:
        tuner.tune(settings_for(db_url), search_space=tiny_space)
    msg = str(err.value)
    assert "BTC" in msg and "201 rows are too few" in msg and "at least 252" in msg
    assert tuner.list_studies(db_url) == []


# --------------------------------------------------------------------------------------------
# PostgreSQL: schema, parallel workers, crash recovery, Ctrl-C, notebook API
# --------------------------------------------------------------------------------------------


def test_parallel_workers_in_a_schema_finish_exactly_n_trials(pg_data: str) -> None:
    settings = settings_for(pg_data, workers=2, n_trials=4, optuna_schema=SCHEMA, pruner="none")
    result = tuner.tune(settings, search_space=tiny_space)
    states = [t.state for t in result.study.trials]
    assert len(states) == 4 and states.count(TrialState.COMPLETE) == 4
    assert result.summary["trial_counts"]["FAIL"] == 0
    assert result.summary["storage"].startswith("postgresql")
    workers = {t.user_attrs["worker"] for t in result.study.trials}
    assert len(workers) <= 2
    engine = sa.create_engine(pg_data)
    with engine.connect() as conn:
        tables = conn.execute(
            sa.text(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_name IN ('studies', 'trials', 'trial_heartbeats')"
            )
        ).all()
    engine.dispose()
    assert {(s, t) for s, t in tables} == {
        (SCHEMA, "studies"),
        (SCHEMA, "trials"),
        (SCHEMA, "trial_heartbeats"),
    }
    rows = tuner.list_studies(pg_data, SCHEMA)
    assert rows[0]["name"] == "gru_BTC_1d" and rows[0]["n_finished"] == 4
    assert tuner.list_studies(pg_data) == []  # nothing in public


def _start_tune(
    settings: Settings, tmp_path: Path, slow_from: int, *, new_session: bool = False
) -> subprocess.Popen[str]:
    script = (
        "import json, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from test_tuner import slow_space\n"
        "from kallos_models import tuner\n"
        "from kallos_models.config import resolve_settings\n"
        "settings = resolve_settings(json.loads(sys.argv[1]))\n"
        "try:\n"
        "    tuner.tune(settings, search_space=slow_space)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    values = {
        k: getattr(settings, k)
        for k in (
            "db_url",
            "asset_id",
            "model_name",
            "tune_end_date",
            "n_trials",
            "max_epochs",
            "accelerator",
            "optuna_schema",
            "heartbeat_interval",
            "grace_period",
            "output_path",
            "workers",
        )
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
        "TUNER_TEST_SLOW_FROM": str(slow_from),
    }
    return subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(values)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def _wait_running(proc: subprocess.Popen[str], url: str, number: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if pg_states(url).get(number) == "RUNNING":
            return
        if proc.poll() is not None:
            pytest.fail(f"tune exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("no trial became RUNNING within 120 s")


def test_killed_worker_trial_is_failed_and_retried(pg_data: str, tmp_path: Path) -> None:
    settings = settings_for(
        pg_data, optuna_schema=SCHEMA, heartbeat_interval=1, grace_period=2, n_trials=2
    )
    proc = _start_tune(settings, tmp_path, slow_from=0)
    _wait_running(proc, pg_data, 0)
    time.sleep(1.5)  # at least one heartbeat recorded
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    assert pg_states(pg_data) == {0: "RUNNING"}  # what a crash leaves behind

    result = tuner.tune(settings, search_space=tiny_space)
    trials = {t.number: t for t in result.study.trials}
    assert trials[0].state == TrialState.FAIL
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]
    assert finished(result.study) == 2
    retried = [t for t in trials.values() if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == trials[0].params  # the killed trial's parameters, run again


def test_ctrl_c_fails_the_running_trial_and_keeps_the_best_so_far(
    pg_data: str, tmp_path: Path
) -> None:
    settings = settings_for(pg_data, optuna_schema=SCHEMA, n_trials=3, output_path=str(tmp_path))
    proc = _start_tune(settings, tmp_path, slow_from=1)
    _wait_running(proc, pg_data, 1)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert pg_states(pg_data) == {0: "COMPLETE", 1: "FAIL"}
    data = json.loads((tmp_path / "gru_BTC_best_params.json").read_text())
    assert data["best_trial"] == 0 and data["trial_counts"]["FAIL"] == 1


def test_ctrl_c_with_parallel_workers_leaves_nothing_running(pg_data: str, tmp_path: Path) -> None:
    settings = settings_for(pg_data, optuna_schema=SCHEMA, n_trials=4, workers=2)
    proc = _start_tune(settings, tmp_path, slow_from=2, new_session=True)
    _wait_running(proc, pg_data, 2)
    _wait_running(proc, pg_data, 3)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stderr[-3000:]
    assert pg_states(pg_data) == {0: "COMPLETE", 1: "COMPLETE", 2: "FAIL", 3: "FAIL"}
    assert "Traceback" not in stderr  # one log line, not Optuna's traceback per worker
    assert (tmp_path / "gru_BTC_best_params.json").is_file()


def test_run_tuning_notebook_call_honours_the_environment(
    pg_data: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KALLOS_MAX_EPOCHS", "1")
    url = sa.make_url(pg_data)
    db_kwargs = {
        "postgres_user": url.username,
        "postgres_password": url.password or "",
        "postgres_host": url.host,
        "postgres_port": url.port or 5432,
        "postgres_db": url.database,
    }
    study = tuner.run_tuning(
        "BTC", END, db_kwargs, "nb_optuna", "gru", None, "close", None, 2, search_space=tiny_space
    )
    assert isinstance(study, optuna.Study)
    assert study.study_name == "gru_BTC_1d" and finished(study) == 2
    for trial in study.trials:
        assert trial.user_attrs["epochs_run"] == [1, 1, 1]  # KALLOS_MAX_EPOCHS=1
        assert trial.user_attrs["n_epochs"] == 1
    assert (tmp_path / "gru_BTC_best_params.json").is_file()  # output_path default: cwd
    assert pg_states(pg_data, "nb_optuna") == {0: "COMPLETE", 1: "COMPLETE"}
    with pytest.raises(ConfigError, match="unknown settings: bogus"):
        tuner.run_tuning("BTC", END, db_kwargs, None, "gru", None, None, None, 1, bogus=1)


def test_tuning_reports_do_not_change_the_global_plot_style(sqlite_data: str) -> None:
    import matplotlib

    before = dict(matplotlib.rcParams)
    tuner.tune(settings_for(sqlite_data), search_space=tiny_space)
    changed = {k for k, v in matplotlib.rcParams.items() if before.get(k) != v}
    assert not changed, sorted(changed)[:5]
