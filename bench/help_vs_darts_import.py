"""`kallos-run --help` against importing Darts' torch models (target <= 0.10x).

.venv/bin/python bench/help_vs_darts_import.py [--runs 7]
"""

from __future__ import annotations

import argparse

from _common import KALLOS_RUN, PYTHON, record_ratio, side_by_side, time_command


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    ours, theirs = side_by_side(
        lambda: time_command([KALLOS_RUN, "--help"]),
        lambda: time_command([PYTHON, "-c", "from darts.models import BlockRNNModel"]),
        runs,
    )
    record_ratio(
        "help",
        what="`kallos-run --help`",
        compared_with='`python -c "from darts.models import BlockRNNModel"`',
        target=0.10,
        ours=ours,
        theirs=theirs,
        command=f"python bench/help_vs_darts_import.py --runs {runs}",
    )


if __name__ == "__main__":
    main()
