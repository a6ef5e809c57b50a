"""`kallos-run compare`: several trained bundles ranked on one hold-out window.

:func:`compare_models` evaluates each bundle as ``kallos-run evaluate`` does, on the same
bars, and ranks them by RMSE ratio to naive persistence with Diebold-Mariano tests against
naive and against the leader (:mod:`.runner`); the rows, the text table (:mod:`.board`) and
the plot of each model's cumulative squared error minus naive's (:mod:`.plot`) are built from
the evaluation records. Global models are ranked on any asset of their basket, beside
single-asset models of it; over several assets, each asset's leaderboard and the models'
mean RMSE ratio over them. See ``documentation/compare.md``.
"""

from kallos_models.compare.board import (
    ScoredModel,
    format_boards,
    format_table,
    interval_columns,
    leaderboard_rows,
)
from kallos_models.compare.plot import plot_leaderboard
from kallos_models.compare.runner import CompareResult, compare_models, distinct_sources

__all__ = [
    "CompareResult",
    "ScoredModel",
    "compare_models",
    "distinct_sources",
    "format_boards",
    "format_table",
    "interval_columns",
    "leaderboard_rows",
    "plot_leaderboard",
]
