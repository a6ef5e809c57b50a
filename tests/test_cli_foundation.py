from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kallos_models.cli import cli
from kallos_models.data import db
from tests.helpers import assert_error, make_ohlcv, write_binance_csv


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _commands(group: click.Group, prefix: list[str]) -> list[list[str]]:
    out = []
    for name, command in group.commands.items():
        out.append([*prefix, name])
        if isinstance(command, click.Group):
            out += _commands(command, [*prefix, name])
    return out


def test_help_lists_commands_with_examples() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for name in ("ingest", "assets", "models", "tune", "studies", "train", "evaluate", "demo"):
        assert name in result.output
    commands = _commands(cli, [])
    assert len(commands) >= 14
    for args in commands:
        sub = run(*args, "-h")
        assert sub.exit_code == 0 and "Example:" in sub.output, args


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from kallos_models.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0\n"
        "print(sorted(m for m in ('torch', 'darts', 'lightning', 'pytorch_lightning', 'optuna',"
        " 'sklearn', 'talib', 'matplotlib', 'mlflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_dash_m_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kallos_models", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "ingest" in out.stdout


def test_ingest_then_assets_json(tmp_path: Path, db_url: str) -> None:
    path = write_binance_csv(make_ohlcv(80), tmp_path / "k.csv")
    result = run("ingest", "--asset-id", "BTC", "--file", str(path), "--db-url", db_url)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["inserted"] == 80 and summary["rejected"] == 0
    again = json.loads(
        run("ingest", "--asset-id", "BTC", "--file", str(path), "--db-url", db_url).stdout
    )
    assert (again["inserted"], again["updated"], again["rows_written"]) == (0, 0, 0)
    listed = json.loads(run("assets", "--json", "--db-url", db_url).stdout)
    assert listed == [
        {
            "asset_id": "BTC",
            "timeframe": "1d",
            "rows": 80,
            "first": "2021-01-01T00:00:00",
            "last": "2021-03-21T00:00:00",
        }
    ]
    table = run("assets", "--db-url", db_url)
    assert "BTC" in table.stdout and "80" in table.stdout


def test_default_database_is_sqlite_in_working_directory(tmp_path: Path) -> None:
    path = write_binance_csv(make_ohlcv(30), tmp_path / "k.csv")
    assert run("ingest", "--asset-id", "BTC", "--file", str(path)).exit_code == 0
    assert (tmp_path / "kallos.db").is_file()
    assert json.loads(run("assets", "--json").stdout)[0]["rows"] == 30


def test_config_file_and_env_supply_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_binance_csv(make_ohlcv(30, freq="4h"), tmp_path / "k.csv")
    cfg = tmp_path / "my.json"
    cfg.write_text(json.dumps({"asset_id": "ETH", "timeframe": "4h"}))
    monkeypatch.setenv("KALLOS_DB_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert run("--config", str(cfg), "ingest", "--file", str(path)).exit_code == 0
    listed = db.list_assets(db.create_db_engine(f"sqlite:///{tmp_path / 'env.db'}"))
    assert [(a["asset_id"], a["timeframe"]) for a in listed] == [("ETH", "4h")]


def test_error_missing_file(tmp_path: Path) -> None:
    assert_error(
        run("ingest", "--asset-id", "BTC", "--file", str(tmp_path / "nope.csv")), "does not exist"
    )


def test_error_unknown_columns(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("when,price\n2021-01-01,1\n")
    result = run("ingest", "--asset-id", "BTC", "--file", str(bad))
    assert_error(result, "match no known format")
    assert "'when', 'price'" in result.stderr and "accepted formats" in result.stderr


def test_error_invalid_rows_names_lines_and_writes_nothing(tmp_path: Path) -> None:
    bars = make_ohlcv(30)
    bars.iloc[4, bars.columns.get_loc("close")] = -5.0
    path = write_binance_csv(bars, tmp_path / "neg.csv")
    result = run("ingest", "--asset-id", "BTC", "--file", str(path))
    assert_error(result, "line 6: non-positive price")
    assert result.stdout == ""
    assert json.loads(run("assets", "--json").stdout) == []
    ok = run("ingest", "--asset-id", "BTC", "--file", str(path), "--skip-invalid")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["rejected"] == 1


def test_error_unreachable_database_masks_password(tmp_path: Path) -> None:
    path = write_binance_csv(make_ohlcv(30), tmp_path / "k.csv")
    url = "postgresql://kallos:hunter2@127.0.0.1:1/market"
    result = run("ingest", "--asset-id", "BTC", "--file", str(path), "--db-url", url)
    assert_error(result, "cannot connect to database")
    assert "hunter2" not in result.output and "***" in result.stderr


def test_error_missing_database(pg_url: str) -> None:
    url = (
        pg_url.rsplit("/", 1)[0].replace("postgres@", "postgres:topsecret@") + "/no_such_db_kallos"
    )
    result = run("assets", "--db-url", url)
    assert_error(result, "no_such_db_kallos")
    assert "topsecret" not in result.output


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    path = write_binance_csv(make_ohlcv(30), tmp_path / "k.csv")
    result = run("ingest", "--file", str(path))
    assert result.exit_code == 2 and "--asset-id" in result.stderr
    assert run("ingest", "--asset-id", "A", "--file", str(path), "--format", "xls").exit_code == 2


def test_error_bad_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"asset": "BTC"}))
    assert_error(run("assets"), "unknown keys: asset")


def test_asset_id_with_quotes_is_data(tmp_path: Path) -> None:
    path = write_binance_csv(make_ohlcv(30), tmp_path / "k.csv")
    evil = "x'); DELETE FROM market_data; --"
    assert run("ingest", "--asset-id", evil, "--file", str(path)).exit_code == 0
    assert json.loads(run("assets", "--json").stdout)[0]["asset_id"] == evil
