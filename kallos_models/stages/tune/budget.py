"""What a tune searches and for how long: the full space on a GPU, a smaller one on a CPU.

The seed's search spaces go up to a GRU of width 256 and 4 layers, about 65 s an epoch on
2,000 daily bars on 2 CPU cores: the default 20-trial tune would take hours there. Without a
GPU the tune therefore samples the CPU space (:attr:`ModelSpec.cpu_search_space`: widths and
depths capped by :data:`~kallos_models.modelling.zoo.specs.CPU_CAPS`) and trains each fold for
at most :data:`CPU_MAX_EPOCHS` epochs, and says so in its log. ``--space full`` (``space=
"full"``) searches the seed's space on any machine; ``--space cpu`` the small one on any.

The space is a property of the study (its ``space`` attribute): a study resumed, or joined by a
worker on another machine, keeps the space it was started with unless ``--space`` says
otherwise, and a resume with another explicit space is refused like any other changed setting.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kallos_models.errors import ConfigError
from kallos_models.modelling import fitting, zoo
from kallos_models.modelling.zoo.specs import CPU_CAPS
from kallos_models.stage_settings import TrainerSettings, TuneSettings

logger = logging.getLogger(__name__)

__all__ = ["CPU_MAX_EPOCHS", "SPACES", "Budget", "choose"]

#: The choices of ``--space``.
SPACES = ("auto", "cpu", "full")
#: Epochs per fold on the CPU space, unless ``--max-epochs`` sets another number than 100.
CPU_MAX_EPOCHS = 20
#: ``max_epochs`` when nobody set it (Settings' default): the CPU space lowers only this one.
_DEFAULT_MAX_EPOCHS = TrainerSettings().max_epochs


@dataclass(frozen=True)
class Budget:
    """The space and epochs a tune runs with.

    Attributes
    ----------
    name : {"cpu", "full", "custom"}
        Which space: ``custom`` when the caller passed its own.
    settings : TuneSettings
        The tune's settings, ``trainer.max_epochs`` lowered on the CPU space.
    search_space : callable or None
        The space to sample; None: the model's full space.
    """

    name: Literal["cpu", "full", "custom"]
    settings: TuneSettings
    search_space: Any


def _has_gpu(accelerator: str) -> bool:
    if accelerator == "cpu":
        return False
    if accelerator in ("gpu", "cuda", "mps", "tpu"):
        return True
    return fitting.cuda_available()


def choose(
    settings: TuneSettings,
    requested: str,
    search_space: Any,
    stored: Mapping[str, Any],
) -> Budget:
    """The space and epoch budget of a tune.

    Parameters
    ----------
    settings : TuneSettings
        The tune's settings (model, accelerator, ``max_epochs``).
    requested : {"auto", "cpu", "full"}
        ``auto``: the stored study's space when it has one, else ``full`` with a GPU and
        ``cpu`` without.
    search_space : callable or None
        The caller's own space (tests, custom searches): used as given, nothing capped.
    stored : Mapping
        The study's attributes when it exists already, else empty.

    Returns
    -------
    Budget

    Raises
    ------
    ConfigError
        ``requested`` is not one of :data:`SPACES`, or the study was tuned with a custom
        space and none is given now.
    """
    if requested not in SPACES:
        raise ConfigError(f"space must be one of {', '.join(SPACES)}, got {requested!r}")
    if search_space is not None:
        return Budget("custom", settings, search_space)
    if stored.get("space") == "custom":
        raise ConfigError(
            f"study {settings.study_name!r} was tuned with a custom search space; pass the "
            "same search_space= to resume it, or a new --study-name"
        )
    spec = zoo.get_spec(settings.model_name)
    if not spec.deep:
        return Budget("full", settings, None)  # trained without epochs, in seconds
    name, why = requested, f"--space {requested}"
    if name == "auto" and stored:  # a study tuned before spaces were recorded: the full one
        name, why = str(stored.get("space") or "full"), "the study was started with it"
    elif name == "auto":
        name, why = (
            ("full", "") if _has_gpu(settings.trainer.accelerator) else ("cpu", "no GPU in use")
        )
    if name == "full":
        return Budget("full", settings, None)
    epochs = settings.trainer.max_epochs
    if epochs == _DEFAULT_MAX_EPOCHS:
        epochs = CPU_MAX_EPOCHS
    trainer = dataclasses.replace(settings.trainer, max_epochs=epochs)
    space = spec.cpu_search_space
    described = space.describe(settings.timeframe) if hasattr(space, "describe") else {}
    capped = {key: value for key, value in described.items() if key in CPU_CAPS}
    logger.info(
        "%s: tuning %s's CPU search space (%s) with at most %d epoch(s) per fold; "
        "--space full searches the full space",
        why,
        settings.model_name,
        ", ".join(f"{k} {v}" for k, v in capped.items()) or "as the full one",
        epochs,
    )
    return Budget("cpu", dataclasses.replace(settings, trainer=trainer), space)
