"""The studies in an Optuna storage: :func:`list_studies` (``kallos-run studies``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL

from kallos_models.data import db
from kallos_models.stages.tune.quiet import quiet
from kallos_models.stages.tune.storage import (
    StorageSpec,
    check_schema,
    connect_error,
    open_storage,
    plain_engine,
)
from kallos_models.stages.tune.workers import STATE_ORDER, n_finished

__all__ = ["list_studies"]


def list_studies(
    storage: str | URL | Mapping[str, Any], optuna_schema: str | None = None
) -> list[dict[str, Any]]:
    """The studies in an Optuna storage, with trial counts and best values.

    Parameters
    ----------
    storage : str, URL or dict
        Storage URL (or the seed's ``db_kwargs`` dict).
    optuna_schema : str or None, default None
        PostgreSQL schema holding Optuna's tables; None: the default schema.

    Returns
    -------
    list of dict
        One per study, by name: ``name``, ``direction``, ``trials`` (state -> count),
        ``n_trials``, ``n_finished``, ``best_value``, ``best_trial``, ``datetime_start`` and
        the study's ``model_name``, ``asset_id``, ``timeframe``, ``metric`` and ``end_date``
        when it was created by :func:`tune`. Empty when the storage holds no Optuna tables.

    Raises
    ------
    DatabaseError
        The storage cannot be reached (URL shown with its password masked).
    ConfigError
        A schema on a non-PostgreSQL storage, or a malformed schema name.
    """
    import optuna

    resolved = db.resolve_url(storage)
    url = resolved.render_as_string(hide_password=False)
    spec = StorageSpec(url=url, schema=check_schema(optuna_schema, url))
    if resolved.get_backend_name() == "sqlite" and resolved.database not in (None, "", ":memory:"):
        if not Path(str(resolved.database)).is_file():
            return []  # listing never creates a database file
    engine = plain_engine(spec)
    try:
        has_tables = sa.inspect(engine).has_table("studies", schema=spec.schema)
    finally:
        engine.dispose()
    if not has_tables:
        return []
    with quiet(False):
        rdb = open_storage(spec, create=False)
        rows = []
        try:
            for frozen in sorted(rdb.get_all_studies(), key=lambda s: s.study_name):
                trials = rdb.get_all_trials(frozen._study_id, deepcopy=False)
                counts = dict.fromkeys(STATE_ORDER, 0)
                for trial in trials:
                    counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
                complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
                minimize = frozen.direction == optuna.study.StudyDirection.MINIMIZE
                best = (min if minimize else max)(complete, key=lambda t: t.value, default=None)
                starts = [t.datetime_start for t in trials if t.datetime_start is not None]
                attrs = frozen.user_attrs
                rows.append(
                    {
                        "name": frozen.study_name,
                        "direction": frozen.direction.name.lower(),
                        "trials": counts,
                        "n_trials": len(trials),
                        "n_finished": n_finished(counts),
                        "best_value": None if best is None else float(best.value),
                        "best_trial": None if best is None else best.number,
                        "datetime_start": str(min(starts)) if starts else None,
                        **{
                            key: attrs.get(key)
                            for key in ("model_name", "asset_id", "timeframe", "metric", "end_date")
                        },
                    }
                )
        except sa.exc.SQLAlchemyError as exc:
            raise connect_error(spec, exc) from None
        finally:
            rdb.engine.dispose()
    return rows
