"""Recipes of the default models under models/, and a runner that trains them (`make models`).

    python -m training.defaults --data ../shared/data --out runs            # sequential, hours on 2 CPU cores
    python -m training.defaults --data DATA --out runs --parallel --minutes 7.5   # all at once on one GPU

The exact command used for the committed models is recorded in models/README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

COLOR = "{data}/live1_color,samples"  # Set14 and BSD68/Set12 stay unseen for evaluation

RECIPES: dict[str, dict] = {
    "denoise-gray": dict(task="denoise", data="{data}/train400_gray", channels=1, crop=96, batch=64, lr=1e-3,
                         steps=60000, val_every=1000),
    "denoise-color": dict(task="denoise", data=COLOR, channels=3, crop=96, batch=64, lr=1e-3, steps=60000,
                          val_every=1000),
    "anomaly": dict(task="anomaly", arch="scene", data=COLOR, channels=3, crop=128, batch=32, lr=1e-3, steps=30000,
                    val_every=1000),
    **{
        f"compress-q{q}": dict(task="compress", data=COLOR, channels=3, crop=256, batch=16, lr=5e-4,
                               steps=100000, quality=q, val_every=1000)
        for q in (1, 2, 3, 4)
    },
    # Codec v2 (docs/codec-v2.md): one variable-rate integer-hyperprior model, a long one-thread CPU run (resumable).
    "compress-hyper": dict(task="compress", arch="hyper", data="{data}/photos_train,samples", channels=3, crop=192,
                           batch=4, lr=3e-4, steps=120000, val_every=500, log_every=100),
}  # fmt: skip
OPT_IN = {"compress-hyper"}  # trained only when named with --only (not part of `make models` yet)

# Stage 2: fine-tuning from stage 1's best weights at a lower learning rate (what the committed models got on
# the GPU: 3.6 more minutes each, 5 jobs at once).
FINETUNE: dict[str, dict] = {
    **{f"compress-q{q}": dict(lr=2e-4, steps=12000, seed=1, val_every=500) for q in (1, 2, 3, 4)},
    "denoise-color": dict(lr=3e-4, steps=15000, seed=1, val_every=500),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder holding train400_gray/ and live1_color/")
    ap.add_argument("--out", default="runs")
    ap.add_argument("--only", nargs="*", default=None, help="recipe names (default: all)")
    ap.add_argument("--minutes", type=float, default=None, help="time budget per model")
    ap.add_argument("--parallel", action="store_true", help="train all recipes at once (one GPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--stage",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: train from scratch; 2: fine-tune FINETUNE recipes from OUT/NAME-stage1/best.safetensors",
    )
    args = ap.parse_args(argv)
    names = args.only or ([n for n in RECIPES if n not in OPT_IN] if args.stage == 1 else list(FINETUNE))
    procs = []
    for name in names:
        r = dict(RECIPES[name])
        r["data"] = r["data"].format(data=args.data)
        r.update(out=str(Path(args.out) / name), device=args.device, seed=args.seed, threads=args.threads)
        if args.stage == 2:
            r.update(FINETUNE[name], init=str(Path(args.out) / f"{name}-stage1" / "best.safetensors"))
        elif name in FINETUNE:
            r["out"] = str(Path(args.out) / f"{name}-stage1")
        if args.minutes:
            r["minutes"] = args.minutes
        code = ("import json,sys; from training.train import TrainConfig, train; "
                f"train(TrainConfig(**json.loads(sys.argv[1])), progress={not args.parallel})")  # fmt: skip
        cmd = [sys.executable, "-c", code, json.dumps(r)]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[:2])} ... {json.dumps(r)}", flush=True)
        Path(r["out"]).mkdir(parents=True, exist_ok=True)
        log = open(Path(r["out"]) / "stdout.log", "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        procs.append((name, p, log))
        if not args.parallel:
            p.wait()
    failed = 0
    for name, p, log in procs:
        rc = p.wait()
        log.close()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: exit {rc}", flush=True)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
