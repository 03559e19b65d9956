"""Export every default training run into models/ (`make models`, after training.defaults).

python -m export.defaults --runs runs --out models
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.bundle import export_run
from training.defaults import RECIPES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="models")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    for name in args.only or list(RECIPES):
        run, out = Path(args.runs) / name, Path(args.out) / name
        cmd = f"edgeae export {run} --out {out} --int8 --fp16 --threads {args.threads}"
        print(cmd, flush=True)
        export_run(run, out, fp16=True, int8=True, command=cmd,
                   threads=args.threads)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
