"""Peak memory of a tune on the 55k-row Bitstamp 2h series, and growth across trials.

Records the process's resident memory after every finished trial (from /proc) and the peak
(ru_maxrss). NLinear keeps each trial to seconds on the full series; the search space is the
registry's (lookback 360-512 bars at 2h).

    .venv/bin/python bench/tune_memory.py [--trials 8] [--max-epochs 1]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

from _common import ingest_shared, record


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=1)
    args = parser.parse_args()
    from kallos_models import tuner
    from kallos_models.config import resolve_settings

    work = Path(tempfile.mkdtemp(prefix="kallos_bench_mem_"))
    url = f"sqlite:///{work / 'kallos.db'}"
    ingest_shared(url, "BTCUSD", "2h", "ohlcv/BTCUSD_2h_bitstamp.csv")
    from kallos_models.modelling import fitting as training

    after_fit: list[float] = []
    original = training.fit_forecaster

    def observed_fit(*a, **kw):  # resident memory after every fold's fit
        out = original(*a, **kw)
        after_fit.append(rss_mb())
        return out

    training.fit_forecaster = observed_fit
    settings = resolve_settings(
        {
            "db_url": url,
            "asset_id": "BTCUSD",
            "timeframe": "2h",
            "model_name": "nlinear",
            "tune_end_date": "2025-08-26",
            "n_trials": args.trials,
            "seed": 42,
            "max_epochs": args.max_epochs,
            "output_path": str(work),
            "accelerator": "cpu",
            "max_gap_bars": 16,
        },
        cwd=work,
    )
    tuner.tune(settings)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if len(after_fit) < 6:
        raise SystemExit(f"only {len(after_fit)} fits ran; nothing to compare")
    # A leak grows with every fit; allocator caches grow early and then level off. So compare
    # the middle of the run with its end.
    middle, last = after_fit[len(after_fit) // 2], after_fit[-1]
    growth = last - middle
    print("rss_after_each_fit_mb", [round(v) for v in after_fit], file=sys.stderr)
    record(
        "tune_memory",
        {
            "what": "peak memory of a tune on the 55k-row 2h series "
            f"(NLinear, {args.trials} trials)",
            "compared_with": "itself across trials (RSS after the middle fold fit vs the last)",
            "target": "recorded; no growth across trials",
            "measured": f"peak {peak:.0f} MB; RSS after each of {len(after_fit)} fold fits: "
            f"first {after_fit[0]:.0f}, middle {middle:.0f}, last {last:.0f} MB "
            f"(second half {growth:+.0f} MB)",
            "verdict": "no growth" if growth <= 0.02 * middle else "grows",
            "command": f"python bench/tune_memory.py --trials {args.trials} "
            f"--max-epochs {args.max_epochs}",
        },
    )


if __name__ == "__main__":
    main()
