"""Ctrl-C and SIGTERM during any command: one line, exit 130 or 143, nothing half-written.

A real ``python -m kallos_models ingest --binance`` process is stopped by a real signal while
it waits on an archive server that accepted the connection and never answers (the moment a
nightly job is most often killed by a scheduler's timeout). Before, click turned Ctrl-C into
"Aborted!" and exit status 1, and SIGTERM killed the process without a word.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kallos_models.data import db


class StallingServer:
    """Accepts HTTP connections and never answers; ``accepted`` is set on the first."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize(
    ("signum", "status", "word"),
    [(signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, "Terminated")],
)
def test_a_signal_stops_any_command_with_one_line_and_its_status(
    tmp_path: Path, signum: int, status: int, word: str
) -> None:
    server = StallingServer()
    url = f"sqlite:///{(tmp_path / 'kallos.db').as_posix()}"
    env = {
        **os.environ,
        "KALLOS_BINANCE_ARCHIVE_URL": server.url,
        "HOME": str(tmp_path),  # the archive cache goes under it
    }
    # a Python started without a terminal ignores SIGINT in background jobs; this one does not
    proc = subprocess.Popen(
        [sys.executable, "-m", "kallos_models", "ingest", "--asset-id", "BTC",
         "--timeframe", "1d", "--binance", "BTCUSDT", "--start", "2025-01", "--end", "2025-01",
         "--db-url", url],
        env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.accepted.wait(60), "the ingest never reached the archive server"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr and "Aborted!" not in stderr
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith(word)]
    assert "ingest stopped before it finished" in line and "run the same command again" in line
    assert stdout == ""
    # nothing was written: the table is there (set up before the download) and empty
    engine = db.create_db_engine(url)
    try:
        assert db.count_rows(engine, "BTC", "1d") == 0
    finally:
        engine.dispose()
