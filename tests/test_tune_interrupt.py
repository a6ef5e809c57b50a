"""Ctrl-C and SIGTERM during `kallos-run tune`: a real signal sent to a real process.

Each case starts ``python -m kallos_models -v tune`` (what the ``kallos-run`` script runs) on a
tiny NLinear study, waits until trial 0 is COMPLETE and trial 1 has reached a chosen point,
signals the process and checks the contract of ``documentation/tuner.md``: exit status 130
(143 for SIGTERM), one ``Interrupted:`` (``Terminated:``) line and no traceback, no trial left
RUNNING in the study, trial 1 FAIL, and the params file written from trial 0.

The points are found in what ``-v`` prints on stderr, in order: Lightning's progress bars
show where a fit is (the sanity validation, ``Epoch N``, the epoch-end ``Validation``), and the
trainer that Darts builds for the fold's historical forecasts logs "GPU available" just before
it predicts. Trial 1's first fit is the first "fitting nlinear" after trial 0 is COMPLETE.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from kallos_models.data import db, ingest
from tests.helpers import make_ohlcv, write_binance_csv

ROOT = Path(__file__).resolve().parents[1]
END = "2022-01-31"  # 347 rows after the warm-up: 3 folds of 45 validation bars
STUDY = "nlinear_BTC_1d"
PARAMS_FILE = "nlinear_BTC_best_params.json"
#: Seconds a case may wait for the tune to reach its point (start-up is ~12 s on 2 cores).
WAIT_S = 90
#: Lightning's progress bar when a fit's sanity validation starts: once per fit.
SANITY = r"^Sanity Checking DataLoader 0: +0%"

#: Where trial 1's first fold is when the signal goes: patterns to see on stderr in order after
#: that fit's sanity check started (the progress bars go to stderr too, in order with the logs).
POINTS: dict[str, tuple[str, ...]] = {
    # the training loop: epoch 2 of at least 6 (early stopping waits 5 epochs)
    "train": (r"^Epoch 2: ",),
    # the validation loop that ends an epoch (one batch: the signal may land just after it)
    "validation": (r"^Epoch 1: ", r"^Validation DataLoader 0: +0%"),
    # the fit is over: Darts' historical_forecasts builds its predict trainer and predicts
    "forecast": (r"fitting: fit nlinear:", r"GPU available"),
}


def _default_sigint() -> None:
    """In the child before exec: SIGINT as a terminal leaves it (a shell may ignore it in
    background jobs, and Python keeps an inherited SIG_IGN)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Tune:
    """A running ``kallos-run -v tune``; its stdout and stderr are read in threads, split at
    carriage returns too (the progress bars, on stderr)."""

    def __init__(self, db_url: str, out_dir: Path, cwd: Path) -> None:
        argv = [
            sys.executable, "-m", "kallos_models", "-v", "tune", "--model-name", "nlinear",
            "--asset-id", "BTC", "--db-url", db_url, "--end-date", END, "--n-trials", "20",
            "--max-epochs", "30", "--seed", "5", "--output-path", str(out_dir),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KALLOS_ACCELERATOR": "cpu"}
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_default_sigint,
        )
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: Any) -> None:
        pending = ""
        for chunk in iter(lambda: stream.read1(65536), b""):
            parts = re.split(r"[\r\n]", pending + chunk.decode("utf-8", "replace"))
            pending = parts.pop()
            with self._changed:
                self.lines[name].extend(part for part in parts if part.strip())
                self._changed.notify_all()
        with self._changed:
            if pending.strip():
                self.lines[name].append(pending)
            self._changed.notify_all()

    def wait_for(self, stream: str, pattern: str, after: int = 0, count: int = 1) -> int:
        """Index of the ``count``-th line of ``stream`` from ``after`` on matching ``pattern``."""
        deadline = time.monotonic() + WAIT_S
        seen, found = after, 0
        with self._changed:
            while True:
                lines = self.lines[stream]
                for index in range(seen, len(lines)):
                    if re.search(pattern, lines[index]):
                        found += 1
                        if found == count:
                            return index
                seen = len(lines)
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    pytest.fail(f"tune ended early ({self.proc.returncode}):\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    self.proc.kill()
                    pytest.fail(f"no {pattern!r} on {stream} within {WAIT_S} s:\n{self.tail()}")
                self._changed.wait(timeout=min(left, 0.5))

    def finish(self, timeout: float = 60) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"tune did not exit within {timeout} s of the signal:\n{self.tail()}")
        for reader in self._readers:
            reader.join(timeout=10)
        return self.proc.returncode

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines["stderr"][-n:])


def _load_bars(url: str, tmp_path: Path) -> str:
    """420 daily bars of BTC in the database that also holds the study."""
    csv = write_binance_csv(make_ohlcv(420, seed=3), tmp_path / "btc.csv")
    engine = db.create_db_engine(url)
    ingest.ingest_file(engine, "BTC", "1d", csv)
    engine.dispose()
    return url


@pytest.fixture
def data_url(db_url: str, tmp_path: Path) -> str:
    """The bars on SQLite and on PostgreSQL."""
    return _load_bars(db_url, tmp_path)


@pytest.fixture
def sqlite_data(sqlite_url: str, tmp_path: Path) -> str:
    """The bars on SQLite only, where the storage does not matter to the case."""
    return _load_bars(sqlite_url, tmp_path)


def _interrupt_trial_1(
    data_url: str, tmp_path: Path, point: str, signum: int = signal.SIGINT
) -> tuple[_Tune, int]:
    tune = _Tune(data_url, tmp_path / "out", tmp_path)
    try:
        done = tune.wait_for("stderr", r"workers: trial 0 COMPLETE")
        at = tune.wait_for("stderr", r"fitting: fitting nlinear", after=done)
        at = tune.wait_for("stderr", SANITY, after=at + 1)
        for pattern in POINTS[point]:
            at = tune.wait_for("stderr", pattern, after=at + 1)
        tune.proc.send_signal(signum)
        return tune, tune.finish()
    finally:
        if tune.proc.poll() is None:
            tune.proc.kill()
            tune.proc.wait()


def _check_study(data_url: str, tmp_path: Path) -> None:
    study = optuna.load_study(study_name=STUDY, storage=data_url)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert TrialState.RUNNING not in states.values(), states
    assert states[0] == TrialState.COMPLETE and states[1] == TrialState.FAIL, states
    assert set(states) == {0, 1}, states
    params = (tmp_path / "out" / PARAMS_FILE).read_text()
    assert '"best_trial": 0' in params


def _check_exit(tune: _Tune, code: int, expected: int, word: str) -> None:
    stderr = "\n".join(tune.lines["stderr"])
    assert code == expected, tune.tail()
    said = [line for line in tune.lines["stderr"] if line.startswith(f"{word}:")]
    assert len(said) == 1 and "run the same command to resume" in said[0], stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not [ln for ln in tune.lines["stdout"] if ln.startswith("{")]  # no summary JSON


def test_ctrl_c_in_the_training_loop_fails_the_trial_and_exits_130(
    data_url: str, tmp_path: Path
) -> None:
    tune, code = _interrupt_trial_1(data_url, tmp_path, "train")
    _check_exit(tune, code, 130, "Interrupted")
    _check_study(data_url, tmp_path)


@pytest.mark.parametrize("point", ["validation", "forecast"])
def test_ctrl_c_in_validation_or_forecasts_fails_the_trial_and_exits_130(
    point: str, sqlite_data: str, tmp_path: Path
) -> None:
    tune, code = _interrupt_trial_1(sqlite_data, tmp_path, point)
    _check_exit(tune, code, 130, "Interrupted")
    _check_study(sqlite_data, tmp_path)


def test_sigterm_in_the_fit_is_handled_like_ctrl_c(sqlite_data: str, tmp_path: Path) -> None:
    tune, code = _interrupt_trial_1(sqlite_data, tmp_path, "train", signal.SIGTERM)
    _check_exit(tune, code, 143, "Terminated")
    _check_study(sqlite_data, tmp_path)


# --------------------------------------------------------------------------------------------
# The two pieces in-process: Lightning's exit made an interrupt again, the guarded clean-up
# --------------------------------------------------------------------------------------------


def test_surface_interrupts_turns_lightnings_exit_back_into_keyboard_interrupt() -> None:
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from kallos_models.modelling.fitting import surface_interrupts

    before = signal.getsignal(signal.SIGINT)

    def lightning_after_ctrl_c() -> None:  # what _call_and_handle_interrupt does
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            sys.exit(1)

    with pytest.raises(KeyboardInterrupt), surface_interrupts():
        lightning_after_ctrl_c()
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C works again
    with pytest.raises(KeyboardInterrupt), surface_interrupts():
        raise SIGTERMException  # SIGTERM in a Lightning loop: a SystemExit with no code
    with pytest.raises(SystemExit), surface_interrupts():
        sys.exit(2)  # any other exit is left alone


def test_a_second_signal_during_the_clean_up_is_logged_and_a_third_stops_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kallos_models.stages.tune import interrupts
    from kallos_models.stages.tune.interrupts import finish_before_stopping

    # on the module's logger itself: a CLI test before this one may stop kallos_models' loggers
    # from propagating to the root logger, where caplog listens by default
    interrupts.logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger=interrupts.logger.name)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), finish_before_stopping("marking trials FAIL"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs here; the clean-up goes on
        assert "still marking trials FAIL" in caplog.text
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # not reached: the next signal stops at once
    interrupts.logger.removeHandler(caplog.handler)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_ctrl_c_as_optuna_creates_the_trial_leaves_nothing_running(
    sqlite_data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C inside ``study.ask``: the trial row is written, the objective has not run, so
    Optuna does not fail it and it carries no ``worker`` tag yet."""
    from kallos_models.config import resolve_settings
    from kallos_models.stages import tune

    def interrupted(self: Any, study: Any, trial: Any) -> None:
        if trial.number == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(optuna.samplers.TPESampler, "before_trial", interrupted)
    settings = resolve_settings(
        {
            "db_url": sqlite_data,
            "asset_id": "BTC",
            "model_name": "nlinear",
            "tune_end_date": END,
            "n_trials": 3,
            "max_epochs": 1,
            "output_path": str(tmp_path / "out"),
        }
    )
    with pytest.raises(KeyboardInterrupt):
        tune.tune(settings)
    _check_study(sqlite_data, tmp_path)
