"""``python -m bench``: run the benchmark suite and write its dated report to ``bench/results/``.

``make bench`` runs ``--profile quick`` (a few minutes), ``make bench-full`` ``--profile full``.
Run it with Redis available (``python -m scripts.devenv exec --`` finds or embeds one, as the make targets
do), on an otherwise quiet machine, and never two benchmarks at once.

Examples::

    python -m bench                                   # quick, against production_command()
    python -m bench --server uvicorn --workers 2      # compare a server choice
    python -m bench --profile full --only fanout      # just the clients x rate grid
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import report, suite
from bench.limits import raise_open_files_limit
from bench.servers import SERVER_CHOICES, ServerSpec
from bench.targets import verdicts

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the suite, write and print the results; 1 if the run stopped on an error."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(suite.PROFILES), default="quick")
    parser.add_argument(
        "--server", choices=SERVER_CHOICES, default="default", help="default: what `make serve` runs"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (WEB_CONCURRENCY of the default server; 0: auto, as make serve runs it)",
    )
    parser.add_argument(
        "--loadgen-workers", type=int, default=max(2, os.cpu_count() or 2), help="load-generator processes"
    )
    parser.add_argument("--only", default=",".join(suite.SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where reports are written")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(suite.SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: choose from {', '.join(suite.SCENARIOS)}")
    raise_open_files_limit()
    run = suite.run(args.profile, ServerSpec(args.server, args.workers), args.loadgen_workers, only)
    written = report.write(run, args.results)
    print()
    for v in verdicts(run):
        print(f"{v.word:4}  {v.target}: {v.project} (baseline {v.baseline}, ratio {v.ratio})")
    print(f"\nreport: {written}")
    if "error" in run:
        print(f"the run stopped early: {run['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
