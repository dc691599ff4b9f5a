"""``python -m bench [--quick] [NAME ...]``: run every benchmark (or the named ones), one after another.

Each benchmark prints its own table with its peer measured in the same run.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ["import_throughput", "candles", "history_sync", "features", "sources", "stream", "training_set",
              "prediction_log", "api"]


def main(argv: list[str]) -> int:
    flags = [a for a in argv if a.startswith("-")]
    names = [a for a in argv if not a.startswith("-")] or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"\n=== bench.{name} {' '.join(flags)}", flush=True)
        if subprocess.call([sys.executable, "-m", f"bench.{name}", *flags]) != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
