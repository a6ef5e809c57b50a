"""`kallos-run demo`: the main job end to end on a labelled synthetic market, and re-run."""

from __future__ import annotations

import json
from pathlib import Path

from kallos_models.data import db
from tests.helpers import run_cli_json


def test_demo_runs_the_whole_job_and_runs_again(tmp_path: Path) -> None:
    args = ["demo", "--workdir", "work", "--n-trials", "2", "--max-epochs", "1"]
    summary = run_cli_json(*args)
    work = tmp_path / "work"
    assert summary["synthetic"] is True
    assert Path(summary["params_path"]).is_file()
    assert Path(summary["metrics_path"]).is_file() and Path(summary["plot_path"]).is_file()
    for path in summary["bundle"].values():
        assert Path(path).is_file()
    metrics = json.loads(Path(summary["metrics_path"]).read_text())
    assert metrics["rmse"] > 0 and metrics["naive"]["rmse"] > 0
    engine = db.create_db_engine(f"sqlite:///{(work / 'kallos.db').as_posix()}")
    (listed,) = db.list_assets(engine)
    engine.dispose()
    assert listed["asset_id"] == "SYNTHETIC" and listed["rows"] == 1500
    # a scheduler may run it twice: the second run resumes the study and replaces the bundle
    assert run_cli_json(*args)["metrics_path"] == summary["metrics_path"]
