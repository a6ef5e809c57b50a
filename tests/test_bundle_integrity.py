"""A bundle is complete or absent, and its manifest is tamper-evident.

- A real `kallos-run train` killed with SIGKILL while it writes its bundle leaves no bundle
  at the target (no manifest there; only a hidden staging folder), and the re-run without
  --overwrite succeeds and leaves exactly the bundle's four files. Once at the first file the
  save writes, once (under strace, which delays every rename) between the renames that
  publish it.
- Files under a bundle's names without a manifest (an older version's interrupted save) do
  not block a re-run, and loading them is one clear error.
- Editing a guarded manifest field (train end, timeframe, asset, columns, indicator spec)
  makes `kallos-run evaluate` and `load_bundle` refuse; train end, timeframe and columns are
  refused even when the digest is recomputed, or absent in a format-1 manifest.
- A format-1 manifest (no digest) still loads and evaluates, with a warning.

One bundle is trained per module; each case edits a copy of it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kallos_models.data import db, ingest
from kallos_models.errors import ArtifactError
from kallos_models.modelling import bundle_files
from kallos_models.modelling import bundles as artifacts
from tests.helpers import (
    assert_error,
    make_ohlcv,
    run_cli,
    run_cli_json,
    tiny_params,
    write_binance_csv,
)

REPO = Path(__file__).resolve().parents[1]
END_DATE = "2021-05-01"
TEST_START, TEST_END = "2021-05-03", "2021-05-25"
BUNDLE_NAMES = ["gru_BTC.pt", "gru_BTC.pt.ckpt", "gru_BTC_manifest.json", "gru_BTC_scaler.pkl"]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """SQLite with BTC 1d, BTC 4h and ETH 1d bars, a tiny params file, one trained bundle."""
    root = tmp_path_factory.mktemp("integrity")
    url = f"sqlite:///{(root / 'kallos.db').as_posix()}"
    engine = db.create_db_engine(url)
    for asset, timeframe, frame in (
        ("BTC", "1d", make_ohlcv(150)),
        ("ETH", "1d", make_ohlcv(150, seed=1)),
        ("BTC", "4h", make_ohlcv(600, freq="4h", start="2021-03-01")),
    ):
        csv = write_binance_csv(frame, root / f"{asset}_{timeframe}.csv")
        ingest.ingest_file(engine, asset, timeframe, csv)
    engine.dispose()
    params = root / "params.json"
    params.write_text(json.dumps(tiny_params("gru", input_chunk_length=10)))
    market = {"root": root, "url": url, "params": params}
    bundle = root / "bundle"
    run_cli_json(*train_args(market, bundle))
    market["bundle"] = bundle
    return market


def train_args(market: dict[str, Any], out: Path) -> list[str]:
    """`kallos-run train` arguments for BTC into ``out``."""
    return [
        "train",
        "--asset-id",
        "BTC",
        "--end-date",
        END_DATE,
        "--params-file",
        str(market["params"]),
        "--output-path",
        str(out),
        "--db-url",
        market["url"],
    ]


def evaluate_args(market: dict[str, Any], model: Path, tmp_path: Path, **flags: str) -> list[str]:
    options = {
        "--asset-id": "BTC",
        "--test-start-date": TEST_START,
        "--test-end-date": TEST_END,
        **{f"--{k.replace('_', '-')}": v for k, v in flags.items()},
    }
    args = ["evaluate", "--model-path", str(model), "--db-url", market["url"]]
    args += ["--output-path", str(tmp_path / "eval")]
    for key, value in options.items():
        args += [key, value]
    return args


def copy_bundle(market: dict[str, Any], target: Path) -> artifacts.BundlePaths:
    target.mkdir(parents=True)
    for name in BUNDLE_NAMES:
        shutil.copy2(market["bundle"] / name, target / name)
    return artifacts.bundle_paths(target, "gru", "BTC")


def edit_manifest(paths: artifacts.BundlePaths, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads(paths.manifest.read_text())
    change(manifest)
    paths.manifest.write_text(json.dumps(manifest, indent=2))


def child_env() -> dict[str, str]:
    """The environment of a `kallos-run` subprocess: this checkout's package first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def any_file_under(directory: Path) -> bool:
    return any(files for _, _, files in os.walk(directory))


def kill_when(
    argv: list[str],
    ready: Callable[[], bool],
    log: Path,
    *,
    victim: Callable[[int], int] = lambda pid: pid,
) -> int:
    """Run ``argv``; SIGKILL the process ``victim(pid)`` as soon as ``ready()``.

    Returns the subprocess's exit status: negative when killed by a signal, 0 when it
    finished before ``ready()`` was seen. Its stderr goes to ``log``.
    """
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(argv, env=child_env(), stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.kill(victim(proc.pid), signal.SIGKILL)
                break
            time.sleep(0.0005)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if status not in (0, -signal.SIGKILL, 128 + signal.SIGKILL):
        pytest.fail(f"train exited {status}: {log.read_text(errors='replace')}")
    return status


def cli_train_argv(market: dict[str, Any], out: Path) -> list[str]:
    return [sys.executable, "-m", "kallos_models", "-q", *train_args(market, out)]


def assert_rerun_recovers(market: dict[str, Any], out: Path, tmp_path: Path) -> None:
    """No bundle at ``out`` (one Error line to evaluate it), the re-run without --overwrite
    works, and afterwards ``out`` holds exactly the bundle, which loads."""
    paths = artifacts.bundle_paths(out, "gru", "BTC")
    assert not paths.manifest.exists()
    with pytest.raises(ArtifactError, match="does not exist"):
        artifacts.load_bundle(paths.model)
    assert_error(run_cli(*evaluate_args(market, paths.model, tmp_path)), "does not exist")

    rerun = run_cli(*train_args(market, out))
    assert rerun.exit_code == 0, rerun.output
    assert sorted(os.listdir(out)) == BUNDLE_NAMES  # nothing the killed run left is kept
    assert artifacts.load_bundle(paths.model).manifest["train_end"] == "2021-05-01T00:00:00"


# -- (a) kill -9 while the bundle is written ---------------------------------------------------


def test_kill_while_writing_leaves_no_bundle_and_rerun_succeeds(
    market: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "models"
    for _attempt in range(3):  # the kill must land before the save ends; retry if it did not
        shutil.rmtree(out, ignore_errors=True)
        status = kill_when(
            cli_train_argv(market, out), lambda: any_file_under(out), tmp_path / "train.log"
        )
        if status == -signal.SIGKILL:
            break
    else:
        pytest.fail("train finished three times before its first bundle file could be killed")
    # what the kill left is hidden (a staging folder), never a file under the bundle's names
    assert os.listdir(out), "the kill landed before anything was written"
    assert all(name.startswith(".") for name in os.listdir(out)), os.listdir(out)
    assert_rerun_recovers(market, out, tmp_path)


def _strace() -> str:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    probe = subprocess.run(
        [strace, "-f", "-qq", "--seccomp-bpf", "-o", os.devnull, "true"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode(errors='replace')}")
    return strace


def _traced_child(strace_pid: int) -> int:
    """The pid of the process strace started (kill that one: a killed tracer detaches)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{strace_pid}/task/{strace_pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.001)
    raise AssertionError("strace started no process")


def test_kill_between_the_publishing_renames_leaves_no_bundle(
    market: dict[str, Any], tmp_path: Path
) -> None:
    """strace delays every rename by 0.4 s, so the kill lands right after the first of the
    renames that publish the bundle: the model file is at its name, the manifest is not."""
    strace = _strace()
    out = tmp_path / "models"
    paths = artifacts.bundle_paths(out, "gru", "BTC")
    renames = "rename,renameat,renameat2"
    argv = [
        strace, "-f", "-qq", "--seccomp-bpf", "-o", os.devnull, "-e", f"trace={renames}",
        "-e", f"inject={renames}:delay_exit=400000", *cli_train_argv(market, out),
    ]  # fmt: skip
    status = kill_when(argv, paths.model.exists, tmp_path / "train.log", victim=_traced_child)
    assert status in (-signal.SIGKILL, 128 + signal.SIGKILL)
    assert paths.model.exists() and not paths.manifest.exists()  # killed mid-publish
    assert_rerun_recovers(market, out, tmp_path)


# -- (b) an older version's leftovers ----------------------------------------------------------


def test_files_without_a_manifest_do_not_block_the_rerun(
    market: dict[str, Any], tmp_path: Path
) -> None:
    """What a killed save of an older version left (data files under the bundle's names, no
    manifest, and its hidden .tmp files) is not a bundle: it is replaced without --overwrite."""
    out = tmp_path / "models"
    paths = copy_bundle(market, out)
    paths.manifest.unlink()
    stale = out / ".gru_BTC.pt.0123abcd.tmp"
    stale.write_bytes(b"half a model")
    (out / ".gru_BTC.pt.0123abcd.tmp.ckpt").write_bytes(b"half a checkpoint")
    kept = out / "notes.txt"  # not the bundle's: never touched
    kept.write_text("mine")

    with pytest.raises(ArtifactError, match=r"manifest .*gru_BTC_manifest\.json does not exist"):
        artifacts.load_bundle(paths.model)
    line = assert_error(run_cli(*evaluate_args(market, paths.model, tmp_path)), "does not exist")
    assert "no --overwrite needed" in line
    result = run_cli(*train_args(market, out))
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == sorted([*BUNDLE_NAMES, "notes.txt"])
    assert artifacts.load_bundle(paths.model).manifest["asset_id"] == "BTC"

    # a complete bundle is still refused without --overwrite
    refused = run_cli(*train_args(market, out))
    assert_error(refused, "already exists; pass --overwrite")


def test_a_folder_is_not_a_bundle(market: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"is a folder.*gru_BTC\.pt"):
        artifacts.load_bundle(market["bundle"])
    assert_error(run_cli(*evaluate_args(market, market["bundle"], tmp_path)), "is a folder")


# -- (c) a manifest edit is refused --------------------------------------------------------------


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: manifest.__setitem__(key, value)


def _rsi_period(manifest: dict[str, Any]) -> None:
    manifest["indicators"]["rsi"]["timeperiod"] = 7


EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], dict[str, str]]] = {
    # an earlier train end would let a window inside the training data past the leakage guard
    "train_end": (_set("train_end", "2021-04-01T00:00:00"), {"test_start_date": "2021-04-10"}),
    "train_end_date": (_set("train_end_date", "2021-04-01T00:00:00"), {}),
    # a 1d model scored on 4h bars
    "timeframe": (_set("timeframe", "4h"), {}),
    # a BTC model scored on ETH
    "asset_id": (_set("asset_id", "ETH"), {"asset_id": "ETH"}),
    "feature_columns": (lambda m: m["feature_columns"].reverse(), {}),
    "target_col": (_set("target_col", "open"), {}),
    "indicators": (_rsi_period, {}),
}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_an_edited_manifest_is_refused(market: dict[str, Any], tmp_path: Path, field: str) -> None:
    change, flags = EDITS[field]
    paths = copy_bundle(market, tmp_path / "bundle")
    edit_manifest(paths, change)
    with pytest.raises(ArtifactError, match="was edited") as info:
        artifacts.load_bundle(paths.model)
    assert str(paths.manifest) in str(info.value)
    line = assert_error(
        run_cli(*evaluate_args(market, paths.model, tmp_path, **flags)),
        f"manifest of bundle {paths.manifest} was edited",
        "retrain or restore it",
    )
    assert "checksum" not in line
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("field", ["train_end", "timeframe", "feature_columns", "target_col"])
@pytest.mark.parametrize("digest", ["recomputed", "format 1"])
def test_guarded_facts_are_checked_against_the_checksummed_files(
    market: dict[str, Any], tmp_path: Path, field: str, digest: str
) -> None:
    """Train end, timeframe and columns are also in the checksummed preprocessor and model:
    an edit is refused even with a recomputed digest, or in a manifest that has none."""
    change, flags = EDITS[field]
    paths = copy_bundle(market, tmp_path / "bundle")

    def edit(manifest: dict[str, Any]) -> None:
        change(manifest)
        if digest == "recomputed":
            manifest[bundle_files.MANIFEST_DIGEST_KEY] = bundle_files.manifest_digest(manifest)
        else:
            manifest.pop(bundle_files.MANIFEST_DIGEST_KEY, None)
            manifest["bundle_format"] = bundle_files.UNSEALED_FORMAT

    edit_manifest(paths, edit)
    with pytest.raises(ArtifactError, match=f"was edited: its {field}"):
        artifacts.load_bundle(paths.model)
    assert_error(run_cli(*evaluate_args(market, paths.model, tmp_path, **flags)), "was edited")


def test_a_removed_digest_is_refused(market: dict[str, Any], tmp_path: Path) -> None:
    paths = copy_bundle(market, tmp_path / "bundle")
    edit_manifest(paths, lambda m: m.pop(bundle_files.MANIFEST_DIGEST_KEY, None))
    with pytest.raises(ArtifactError, match="was edited: its manifest_digest is missing"):
        artifacts.load_bundle(paths.model)


# -- (d) a bundle from before the digest --------------------------------------------------------


def test_a_format_1_bundle_still_loads_and_evaluates(
    market: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = copy_bundle(market, tmp_path / "bundle")

    def unseal(manifest: dict[str, Any]) -> None:
        manifest.pop(bundle_files.MANIFEST_DIGEST_KEY, None)
        manifest["bundle_format"] = 1

    edit_manifest(paths, unseal)
    with caplog.at_level(logging.WARNING, logger="kallos_models.modelling"):
        loaded = artifacts.load_bundle(paths.model)
    assert loaded.manifest["train_end"] == "2021-05-01T00:00:00"
    assert "manifest carries no digest" in caplog.text
    metrics = run_cli_json(*evaluate_args(market, paths.model, tmp_path))
    assert metrics["n"] == 23 and metrics["train_end"] == "2021-05-01T00:00:00"

    # what this version writes: format 2, sealed
    sealed = json.loads((market["bundle"] / "gru_BTC_manifest.json").read_text())
    assert sealed["bundle_format"] == artifacts.BUNDLE_FORMAT == 2
    assert sealed[bundle_files.MANIFEST_DIGEST_KEY] == bundle_files.manifest_digest(sealed)
