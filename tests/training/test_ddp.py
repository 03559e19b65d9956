"""DistributedDataParallel through torchrun: 2 CPU processes on the gloo backend, tiny data, a few steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
from safetensors.torch import load_file  # noqa: E402
from train_images import write_images  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="PyTorch without gloo"),
]

ROOT = Path(__file__).resolve().parents[2]

# Each rank trains through training.train.train() as `edgeae train` does under torchrun, records the model it
# trained and saves that rank's final weights and summary beside the run folder.
WORKER = textwrap.dedent(
    """
    import json, os, sys

    import training.train as tt
    from safetensors.torch import save_file

    args = json.loads(sys.argv[1])
    side, nan_rank, nan_step = args.pop("side"), args.pop("nan_rank", None), args.pop("nan_step", None)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    models = []

    class Recorded(tt.DenoiseUNet):
        def __init__(self, cfg):
            super().__init__(cfg)
            models.append(self)

    tt.DenoiseUNet = Recorded

    def hook(step, loss):
        return loss * float("nan") if (rank == nan_rank and step == nan_step) else loss

    summary = tt.train(tt.TrainConfig(**args), progress=False, loss_hook=hook)
    state = {k: v.detach().cpu().contiguous() for k, v in models[0].state_dict().items()}
    save_file(state, os.path.join(side, f"rank{rank}.safetensors"))
    with open(os.path.join(side, f"rank{rank}.json"), "w") as fh:
        json.dump({"rank": rank, "world": world, "summary": summary}, fh)
    """
)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("data") / "imgs", grain=False)


def torchrun(tmp_path: Path, images: Path, **extra) -> tuple[Path, Path]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run, side = tmp_path / "run", tmp_path / "ranks"
    side.mkdir()
    args = dict(task="denoise", data=str(images), out=str(run), steps=6, batch=2, crop=32, width=8, val_every=3,
                log_every=1, device="cpu", threads=1, side=str(side), **extra)  # fmt: skip
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           str(script), json.dumps(args)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as exc:  # a collective mismatch between ranks hangs
        pytest.fail(f"torchrun hung: {(exc.stderr or b'')[-3000:]!r}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run, side


def _check_ranks(run: Path, side: Path, steps: int) -> list[dict]:
    results = [json.loads((side / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in results] == [2, 2]
    assert results[0]["summary"]["steps"] == steps  # rank 0 reports
    assert results[1]["summary"] == {}
    w0, w1 = load_file(str(side / "rank0.safetensors")), load_file(str(side / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "DDP replicas diverged"
    last = load_file(str(run / "last.safetensors"))  # written by rank 0 from the same replica
    assert all(torch.equal(last[k], w0[k]) for k in w0)
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_ddp_two_processes_train_identical_replicas_and_roll_back_together(tmp_path, images):
    """Two gloo processes train one model: identical replicas, rank 0 alone writes the run folder, and a NaN on
    rank 1 alone rolls back both replicas together (rather than leaving rank 0 waiting in the all-reduce).

    One torchrun launch checks all of it (each launch costs seconds of interpreter and torch start-up).
    """
    run, side = torchrun(tmp_path, images, nan_rank=1, nan_step=4)
    log = _check_ranks(run, side, 6)
    for name in ("config.json", "best.safetensors", "last.safetensors", "summary.json", "split.json"):
        assert (run / name).is_file(), name
    # only rank 0 logs; step 5 (loop index 4) hit the NaN and made no update
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4, 6]
    assert [r["step"] for r in log if r["kind"] == "val"] == [3, 6]
    assert [r for r in log if r["kind"] == "rollback"] == [{"step": 4, "kind": "rollback", "lr_scale": 0.5}]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and np.isfinite(summary["final"]["psnr"])
    assert any("non-finite loss at step 4" in w for w in summary["warnings"])
