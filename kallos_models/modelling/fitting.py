"""Fit one Darts forecaster on prepared series: trainer settings, seeding, early stopping.

Shared by training (no validation) and tuning (per fold, early stopping on its validation
rows), for one asset's series or a basket's lists. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kallos_models.errors import ConfigError, DataError
from kallos_models.modelling import zoo as architectures

if TYPE_CHECKING:
    from kallos_models.modelling.series import PreparedSeries

logger = logging.getLogger(__name__)

__all__ = [
    "FitResult",
    "build_trainer_kwargs",
    "fit_forecaster",
    "resolve_n_epochs",
    "seed_everything",
    "surface_interrupts",
]


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imports torch)."""
    import torch

    return bool(torch.cuda.is_available())


def check_accelerator(accelerator: str) -> None:
    """Refuse, before any work starts, an accelerator this machine does not have.

    Raises
    ------
    ConfigError
        ``gpu``/``cuda`` without a CUDA device torch can see, or ``mps`` without Apple's MPS.
    """
    if accelerator in ("gpu", "cuda") and not cuda_available():
        raise ConfigError(
            f"--accelerator {accelerator}, but torch sees no CUDA device on this machine; use "
            "--accelerator auto (a GPU when there is one, else the CPU) or cpu"
        )
    if accelerator == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError(
                "--accelerator mps, but Apple's MPS is not available on this machine; use "
                "--accelerator auto or cpu"
            )


def build_trainer_kwargs(
    *,
    accelerator: str = "auto",
    devices: str | int = "auto",
    precision: str | None = None,
    show_progress: bool = False,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Lightning trainer kwargs for Darts' ``pl_trainer_kwargs``.

    Parameters
    ----------
    accelerator : str, default "auto"
        Lightning accelerator: ``"auto"`` trains on a CUDA GPU when one is visible and on the
        CPU otherwise; ``"cpu"``, ``"gpu"``/``"cuda"`` and ``"mps"`` force one.
    devices : str or int, default "auto"
        Lightning ``devices`` (``"auto"``, a count such as ``1``, or ``"0,1"``). A string of
        digits is passed as an int.
    precision : str or None, default None
        Lightning precision (``"32-true"``, ``"16-mixed"``, ``"bf16-mixed"``, ...); None
        leaves it to Darts, which matches the series' dtype (float32).
    show_progress : bool, default False
        Show Lightning's progress bar and model summary (they write to stderr).
    callbacks : sequence of Lightning callbacks, default ()
        Callbacks added to the trainer.

    Returns
    -------
    dict
        ``accelerator``, ``devices``, ``enable_progress_bar``, ``enable_model_summary``,
        ``logger`` (False), ``callbacks`` and, where known, ``precision`` and
        ``deterministic``. ``deterministic=True`` is set when training runs on the CPU
        (``accelerator="cpu"``, or ``"auto"`` on a machine without CUDA): there the same data,
        parameters and seed give identical weights. On a GPU it is left unset, since cuDNN
        RNN kernels have no deterministic mode.
    """
    devices_value: str | int = devices
    if isinstance(devices, str) and devices.strip().isdigit():
        devices_value = int(devices.strip())
    kwargs: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": devices_value,
        "enable_progress_bar": bool(show_progress),
        "enable_model_summary": bool(show_progress),
        "logger": False,
        "callbacks": list(callbacks),
    }
    if precision is not None:
        kwargs["precision"] = precision
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not cuda_available())
    if on_cpu:
        kwargs["deterministic"] = True
    return kwargs


@dataclass(frozen=True)
class FitResult:
    """A fitted model and what its training did.

    Attributes
    ----------
    model
        The fitted Darts ``TorchForecastingModel``.
    best_epoch
        1-based epoch with the lowest ``val_loss``; None when fit without validation.
    epochs_run
        Training epochs actually run (fewer than asked when early stopping fired).
    seconds
        Wall-clock seconds of the fit.
    val_loss
        The lowest ``val_loss`` seen; None without validation.
    val_losses
        ``val_loss`` of every epoch, in order (empty without validation).
    """

    model: Any
    best_epoch: int | None
    epochs_run: int
    seconds: float
    val_loss: float | None
    val_losses: tuple[float, ...] = field(default=())


def resolve_n_epochs(
    params: Mapping[str, Any], max_epochs: int | None, model_name: str | None = None
) -> int:
    """Number of epochs to train for.

    Parameters
    ----------
    params : Mapping[str, Any]
        Hyperparameters; may carry ``n_epochs``.
    max_epochs : int or None
        Cap on the epochs; None for no cap.
    model_name : str or None, default None
        Registry key, used for the default when neither gives a value; None uses the common
        default of 100.

    Returns
    -------
    int
        ``min(params["n_epochs"], max_epochs)`` when both are given, else the one given, else
        the registry default.
    """
    from_params = params.get("n_epochs")
    if from_params is not None and max_epochs is not None:
        return min(int(from_params), int(max_epochs))
    if from_params is not None:
        return int(from_params)
    if max_epochs is not None:
        return int(max_epochs)
    if model_name is not None:
        return int(architectures.get_spec(model_name).defaults.get("n_epochs", 100))
    return 100


@contextlib.contextmanager
def surface_interrupts() -> Iterator[None]:
    """Let Ctrl-C (or SIGTERM) during a Lightning call reach the caller as KeyboardInterrupt.

    Lightning 2.x catches a KeyboardInterrupt raised anywhere in ``Trainer.fit``, ``validate``
    and ``predict`` (``_call_and_handle_interrupt``): it sets SIGINT to ``SIG_IGN`` for the rest
    of the process, tears the trainer down and calls ``sys.exit(1)``. A SIGTERM that reaches
    Lightning's own handler during a loop becomes its ``SIGTERMException``, a ``SystemExit``
    with no code (exit status 0). Either skips the caller's interrupt handling: Optuna fails a
    trial on KeyboardInterrupt but not on SystemExit, so the trial stayed RUNNING. Inside this
    context both come out as :class:`KeyboardInterrupt`, and the SIGINT handler that was in
    place before is put back. Wrap every call that may run a Lightning trainer (a Darts
    ``fit``, ``predict`` or ``historical_forecasts``) in it.

    Within it, what is printed to stdout goes to stderr: Lightning's progress bars (``-v``)
    write to stdout, which is kept for results (the JSON a job parses).

    Raises
    ------
    KeyboardInterrupt
        In place of Lightning's ``SystemExit`` after an interrupt or a SIGTERM.
    """
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except SystemExit as exc:
        if isinstance(exc, SIGTERMException) or isinstance(exc.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt() from None
        raise
    finally:
        if (
            main
            and previous is not None
            and previous is not signal.SIG_IGN
            and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        ):
            signal.signal(signal.SIGINT, previous)


def seed_everything(seed: int) -> None:
    """Seed Lightning, Python, numpy and torch with ``seed``."""
    import random

    import numpy as np
    import pytorch_lightning as pl
    import torch

    pl.seed_everything(seed, workers=True, verbose=False)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _make_recorder() -> Any:
    """A Lightning callback that counts training epochs, records val_loss per epoch and
    notes an interrupt Lightning swallowed."""
    import pytorch_lightning as pl

    class _EpochRecorder(pl.Callback):
        def __init__(self) -> None:
            self.epochs_run = 0
            self.val_losses: list[float] = []
            self.interrupted = False

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            if isinstance(exception, KeyboardInterrupt):
                self.interrupted = True

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.epochs_run += 1

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            value = trainer.callback_metrics.get("val_loss")
            if value is not None:
                self.val_losses.append(float(value))

    return _EpochRecorder()


def _strip_callbacks(model: Any, internal: Sequence[Any]) -> None:
    """Remove training-only callbacks from the model so it pickles and reloads cleanly."""
    ids = {id(cb) for cb in internal}
    trainer_params = getattr(model, "trainer_params", None)
    if isinstance(trainer_params, dict) and "callbacks" in trainer_params:
        trainer_params["callbacks"] = [
            cb for cb in trainer_params["callbacks"] if id(cb) not in ids
        ]
    model_params = getattr(model, "_model_params", None)
    if isinstance(model_params, dict):
        pl_kwargs = model_params.get("pl_trainer_kwargs")
        if isinstance(pl_kwargs, dict) and "callbacks" in pl_kwargs:
            # _model_params holds deep copies: drop our callback types by class
            kinds = tuple({type(cb) for cb in internal})
            pl_kwargs["callbacks"] = [
                cb for cb in pl_kwargs["callbacks"] if not isinstance(cb, kinds)
            ]


def _as_list(value: Any) -> list[Any]:
    """A global model's list of series as it is, one series as a list of one."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _described(series: Any) -> str:
    """``a 500-point target series``, or ``3 target series of 400-900 points``."""
    sizes = [len(s) for s in _as_list(series)]
    if len(sizes) == 1:
        return f"a {sizes[0]}-point target series"
    return f"{len(sizes)} target series of {min(sizes)}-{max(sizes)} points"


def _check_train_length(model_name: str, prepared: PreparedSeries, icl: int, ocl: int) -> None:
    n_train = min(len(series) for series in _as_list(prepared.train_target))
    if n_train < icl + ocl:
        raise DataError(
            f"training series has {n_train} rows, but model {model_name!r} needs at least "
            f"{icl + ocl} (input_chunk_length {icl} + output_chunk_length {ocl}); load more "
            "history or lower input_chunk_length"
        )


def _validation_series(prepared: PreparedSeries, model_name: str, icl: int, ocl: int) -> Any:
    """Each validation target with the ``icl`` target rows before it (its first lookback)."""
    out = []
    for val, full in zip(_as_list(prepared.val_target), _as_list(prepared.target), strict=True):
        if len(val) < ocl:
            raise DataError(
                f"validation series has {len(val)} rows, but model {model_name!r} needs at "
                f"least output_chunk_length = {ocl}; lengthen the validation range"
            )
        first_val = val.start_time()
        position = full.get_index_at_point(first_val)
        if position < icl:
            raise DataError(
                f"the validation range starting {first_val} has only {position} earlier target "
                f"rows, but input_chunk_length is {icl}; load more history"
            )
        out.append(full[position - icl :])
    return out if isinstance(prepared.val_target, (list, tuple)) else out[0]


def _fit_regression(
    model_name: str,
    params: Mapping[str, Any],
    prepared: PreparedSeries,
    seed: int,
    quantiles: Sequence[float] | None = None,
) -> FitResult:
    """Fit a regression model (``linear``, ``lightgbm``) on the training rows only: no
    trainer, no epochs; the validation rows, when given, are not used."""
    import random

    import numpy as np

    kwargs = architectures.validate_params(
        model_name, params, random_state=seed, quantiles=quantiles
    )
    _check_train_length(model_name, prepared, *architectures.chunk_lengths(kwargs))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    model = architectures.create_model(model_name, params, random_state=seed, quantiles=quantiles)
    logger.info("fitting %s on %s", model_name, _described(prepared.train_target))
    started = time.perf_counter()
    with surface_interrupts():
        model.fit(series=prepared.train_target, past_covariates=prepared.train_covariates)
    seconds = time.perf_counter() - started
    logger.info("fit %s in %.1fs", model_name, seconds)
    return FitResult(model=model, best_epoch=None, epochs_run=0, seconds=seconds, val_loss=None)


def fit_forecaster(
    model_name: str,
    params: Mapping[str, Any],
    prepared: PreparedSeries,
    *,
    max_epochs: int | None = None,
    seed: int = 42,
    trainer_kwargs: Mapping[str, Any] | None = None,
    early_stopping_patience: int = 5,
    extra_callbacks: Sequence[Any] = (),
    quantiles: Sequence[float] | None = None,
) -> FitResult:
    """Build ``model_name`` with ``params`` and fit it on ``prepared``.

    A regression model (``linear``, ``lightgbm``) is fit by its estimator on the training
    rows; the epoch, trainer, early-stopping and callback arguments do not apply to it, and
    its result has ``epochs_run`` 0 and no ``best_epoch``. What follows is the deep models'.

    The model trains on ``prepared.train_target`` with ``prepared.train_covariates`` as past
    covariates; no validation row is ever a training row. When ``prepared.val_target`` is
    set, Darts computes ``val_loss`` on the validation rows each epoch (the validation series
    starts ``input_chunk_length`` bars before the first validation bar, so the first
    validation window has its lookback), Lightning's ``EarlyStopping`` stops training once
    ``val_loss`` has not improved for ``early_stopping_patience`` epochs, and the epoch with
    the lowest ``val_loss`` is reported. The returned model holds the weights of the last
    epoch run.

    Parameters
    ----------
    model_name : str
        Registry key, e.g. ``"gru"``.
    params : Mapping[str, Any]
        Hyperparameters (Darts names plus ``learning_rate`` and ``n_epochs``); missing ones
        come from the registry defaults.
    prepared : PreparedSeries or PreparedBasket
        One asset's series, or a basket's lists (a global model, see
        :mod:`kallos_models.modelling.basket`).
    max_epochs : int or None, default None
        Cap on the epochs: ``min(params["n_epochs"], max_epochs)`` when both are given, else
        the one given, else the registry default (100).
    seed : int, default 42
        Seeds Python, NumPy, torch, Lightning (``seed_everything(seed, workers=True)``) and
        the Darts model (``random_state``). On the CPU the same data, parameters and seed
        give identical weights.
    trainer_kwargs : Mapping[str, Any] or None, default None
        Lightning kwargs, usually from :func:`build_trainer_kwargs`; None uses
        ``build_trainer_kwargs()``. Its ``callbacks`` are kept.
    early_stopping_patience : int, default 5
        Epochs without a ``val_loss`` improvement before stopping; used only with validation.
    extra_callbacks : sequence of Lightning callbacks, default ()
        Added to the trainer after the internal ones (e.g. an Optuna pruning callback).
    quantiles : sequence of float or None, default None
        Train the model to output these quantiles (Darts' quantile likelihood, see
        :func:`kallos_models.modelling.zoo.validate_params`); None: a point model.

    Returns
    -------
    FitResult

    Raises
    ------
    ModelError
        Unknown model or parameters (see :func:`kallos_models.modelling.zoo.validate_params`).
    DataError
        The training series is shorter than ``input_chunk_length + output_chunk_length``,
        the validation series is shorter than ``output_chunk_length``.
    ConfigError
        ``early_stopping_patience`` is below 1 (with validation).
    KeyboardInterrupt
        Ctrl-C or SIGTERM during the fit, which Lightning would turn into its own exit (see
        :func:`surface_interrupts`).
    """
    if not architectures.get_spec(model_name).deep:
        return _fit_regression(model_name, params, prepared, seed, quantiles)
    n_epochs = resolve_n_epochs(params, max_epochs, model_name)
    base_kwargs = dict(build_trainer_kwargs() if trainer_kwargs is None else trainer_kwargs)
    kwargs = architectures.validate_params(
        model_name,
        params,
        trainer_kwargs=base_kwargs,
        random_state=seed,
        n_epochs=n_epochs,
        quantiles=quantiles,
    )
    input_chunk_length, output_chunk_length = architectures.chunk_lengths(kwargs)
    _check_train_length(model_name, prepared, input_chunk_length, output_chunk_length)

    fit_kwargs: dict[str, Any] = {
        "series": prepared.train_target,
        "past_covariates": prepared.train_covariates,
    }
    recorder = _make_recorder()
    internal: list[Any] = [recorder]
    if prepared.val_target is not None:
        if early_stopping_patience < 1:
            raise ConfigError(
                f"early_stopping_patience must be at least 1, got {early_stopping_patience}"
            )
        from pytorch_lightning.callbacks import EarlyStopping

        internal.append(
            EarlyStopping(
                monitor="val_loss", mode="min", patience=early_stopping_patience, min_delta=0.0
            )
        )
        fit_kwargs["val_series"] = _validation_series(
            prepared, model_name, input_chunk_length, output_chunk_length
        )
        fit_kwargs["val_past_covariates"] = prepared.covariates

    callbacks = [*base_kwargs.get("callbacks", []), *internal, *extra_callbacks]
    trainer_params = {**base_kwargs, "callbacks": callbacks}

    seed_everything(seed)
    model = architectures.create_model(
        model_name,
        params,
        trainer_kwargs=trainer_params,
        random_state=seed,
        n_epochs=n_epochs,
        quantiles=quantiles,
    )
    logger.info(
        "fitting %s on %s for up to %d epochs%s",
        model_name,
        _described(prepared.train_target),
        n_epochs,
        "" if prepared.val_target is None else f" (validation: {_described(prepared.val_target)})",
    )
    started = time.perf_counter()
    with surface_interrupts():
        model.fit(**fit_kwargs)
    if recorder.interrupted:  # a Lightning that ends the fit quietly after Ctrl-C
        raise KeyboardInterrupt()
    seconds = time.perf_counter() - started
    _strip_callbacks(model, internal)

    val_losses = tuple(recorder.val_losses)
    best_epoch: int | None = None
    best_loss: float | None = None
    finite = [(loss, i) for i, loss in enumerate(val_losses) if math.isfinite(loss)]
    if finite:
        best_loss, best_index = min(finite)
        best_epoch = best_index + 1
    epochs_run = int(recorder.epochs_run)
    logger.info(
        "fit %s: %d epoch(s) in %.1fs%s",
        model_name,
        epochs_run,
        seconds,
        "" if best_epoch is None else f", best val_loss {best_loss:.6g} at epoch {best_epoch}",
    )
    return FitResult(
        model=model,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        seconds=seconds,
        val_loss=best_loss,
        val_losses=val_losses,
    )
