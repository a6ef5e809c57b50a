"""What an evaluation returns: :class:`EvaluationResult`, for one asset or a basket."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["EvaluationResult"]


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`kallos_models.stages.evaluate.evaluate_model` computed and wrote.

    Attributes
    ----------
    metrics
        The metrics and their context, as written to ``metrics_path``; for a global model
        the basket's record (``per_asset`` and ``pooled``).
    metrics_path
        ``{output_path}/{stem}_evaluation_metrics.json`` (see
        :mod:`kallos_models.stages.evaluate.holdout`); for a global model the basket's file,
        ``{stem}`` being its short name.
    plot_path
        ``{output_path}/{stem}_evaluation_plot.png``; for a global model one panel per asset.
    forecasts
        One row per evaluated bar: ``actual``, ``forecast``, ``naive``, ``origin_close``;
        for a global model an ``asset_id`` column too.
    manifest_path
        The manifest of the bundle evaluated (what tracking matches to a registered version).
    tracking
        Where the pipeline's tracking logged the metrics (registered model, version, run id),
        or None when tracking is off or the stage ran alone.
    """

    metrics: dict[str, Any]
    metrics_path: Path
    plot_path: Path
    forecasts: pd.DataFrame
    manifest_path: Path | None = None
    tracking: dict[str, Any] | None = None
    #: A global model's per-asset results (their own files), by asset; None otherwise.
    per_asset: dict[str, EvaluationResult] | None = None
