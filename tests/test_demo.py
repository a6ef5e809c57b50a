"""`kallos-run demo`: the main job end to end on a labelled synthetic market, and re-run."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from kallos_models.cli import cli
from kallos_models.data import db


def test_demo_runs_the_whole_job_and_runs_again(tmp_path: Path) -> None:
    args = ["-q", "demo", "--workdir", "work", "--n-trials", "2", "--max-epochs", "1"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
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
    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["metrics_path"] == summary["metrics_path"]
