"""The training loop end to end on tiny data: outputs, determinism, resume, progress, and the `train` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from train_images import write_images  # noqa: E402

from training.checkpoint import load_run  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402

TASKS = ("denoise", "compress", "anomaly")
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".npy", ".npz"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("data") / "imgs")


def cfg_for(out: Path, data: Path, task: str = "denoise", **kw) -> TrainConfig:
    base = dict(task=task, data=str(data), out=str(out), steps=6, batch=2, crop=32, width=8, val_every=3,
                log_every=1, device="cpu", collapse="off", threads=1)  # fmt: skip
    if task == "anomaly":
        base["arch"] = "scene"  # the autoencoder; the inspection model has its own tests (test_inspect.py)
    return TrainConfig(**{**base, **kw})


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / f"{which}.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("task", TASKS)
def test_each_task_trains_and_writes_its_run_folder(tmp_path, images, task):
    run = tmp_path / "run"
    summary = train(cfg_for(run, images, task), progress=False)
    for name in ("config.json", "best.safetensors", "last.safetensors", "log.jsonl", "summary.json", "split.json",
                 "state.json", "optim.safetensors"):  # fmt: skip
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["task"] == task and cfg["model"]["task"] == task
    assert isinstance(cfg["macs_per_pixel"], int) and cfg["macs_per_pixel"] > 0
    assert isinstance(cfg["params"], int) and cfg["params"] > 0
    assert cfg["train"]["steps"] == 6 and cfg["train"]["seed"] == 0
    assert summary == json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["task"] == task
    assert summary["macs_per_pixel"] == cfg["macs_per_pixel"] and summary["params"] == cfg["params"]
    metric = {"denoise": "psnr", "compress": "rd_loss", "anomaly": "image_auroc"}[task]
    assert summary["metric"] == metric and metric in summary["final"]

    # checkpoints are safetensors (nothing pickled anywhere in the run folder)
    for name in ("best", "last"):
        with safe_open(str(run / f"{name}.safetensors"), framework="pt") as f:
            assert len(list(f.keys())) > 0
    for p in run.iterdir():
        assert p.suffix not in PICKLE_SUFFIXES, p
        assert p.read_bytes()[:2] not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"), p
        assert not p.name.startswith("."), f"temp file left behind: {p}"
    model, _ = load_run(run, "best")
    assert not model.training

    log = read_log(run)
    trains = [r for r in log if r["kind"] == "train"]
    vals = [r for r in log if r["kind"] == "val"]
    assert [r["step"] for r in trains] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in vals] == [3, 6]
    for r in trains:
        assert np.isfinite(r["loss"]) and r["grad_norm"] >= 0 and r["lr"] > 0 and r["img_per_s"] > 0
    assert all(metric in r for r in vals)
    if task == "anomaly":  # latent health is logged with validation
        assert all("latent_effective_rank" in r and "latent_var_total" in r for r in vals)


@pytest.mark.parametrize("task", ["denoise", "compress"])
def test_same_seed_same_weights_other_seed_other_weights(tmp_path, images, task):
    a = train(cfg_for(tmp_path / "a", images, task, steps=4, seed=3), progress=False)
    b = train(cfg_for(tmp_path / "b", images, task, steps=4, seed=3), progress=False)
    c = train(cfg_for(tmp_path / "c", images, task, steps=4, seed=4), progress=False)
    assert same(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert not same(weights(tmp_path / "a"), weights(tmp_path / "c"))
    assert a["final"] == b["final"]
    strip = [{k: v for k, v in r.items() if k not in ("elapsed_s", "img_per_s")} for r in read_log(tmp_path / "a")]
    assert strip == [{k: v for k, v in r.items() if k not in ("elapsed_s", "img_per_s")}
                     for r in read_log(tmp_path / "b")]  # fmt: skip
    assert c["steps"] == 4


class Interrupt(Exception):
    pass


def _stop_at(step_to_stop: int):
    def hook(step, loss):
        if step == step_to_stop:
            raise Interrupt
        return loss

    return hook


@pytest.mark.parametrize("task", ["denoise", "compress", "anomaly"])
def test_interrupted_and_resumed_run_equals_one_go(tmp_path, images, task):
    kw = dict(steps=10, val_every=5)
    train(cfg_for(tmp_path / "once", images, task, **kw), progress=False)
    with pytest.raises(Interrupt):  # killed during step 6, after the checkpoint of step 5
        train(cfg_for(tmp_path / "twice", images, task, **kw), progress=False, loss_hook=_stop_at(5))
    state = json.loads((tmp_path / "twice" / "state.json").read_text())
    assert state["step"] == 5
    summary = train(cfg_for(tmp_path / "twice", images, task, **kw), progress=False)
    assert summary["steps"] == 10
    assert same(weights(tmp_path / "once"), weights(tmp_path / "twice"))
    assert same(weights(tmp_path / "once", "best"), weights(tmp_path / "twice", "best"))
    steps = [r["step"] for r in read_log(tmp_path / "twice") if r["kind"] == "train"]
    assert steps == list(range(1, 11))  # the log continues where the checkpoint was


def test_resume_extends_a_finished_run(tmp_path, images):
    run = tmp_path / "run"
    train(cfg_for(run, images, steps=5, val_every=5), progress=False)
    after5 = weights(run)
    summary = train(cfg_for(run, images, steps=10, val_every=5), progress=False)
    assert summary["steps"] == 10
    log = read_log(run)
    trains = [r["step"] for r in log if r["kind"] == "train"]
    assert trains == list(range(1, 11))
    assert [r["step"] for r in log if r["kind"] == "val"] == [5, 10]
    assert not same(after5, weights(run))
    assert json.loads((run / "state.json").read_text())["step"] == 10


def test_resume_with_nothing_left_to_do_only_validates(tmp_path, images):
    run = tmp_path / "run"
    train(cfg_for(run, images, steps=3), progress=False)
    w = weights(run)
    summary = train(cfg_for(run, images, steps=3), progress=False)
    assert summary["steps"] == 3 and same(w, weights(run))


def test_best_checkpoint_follows_the_validation_metric(tmp_path, images):
    run = tmp_path / "run"
    summary = train(cfg_for(run, images, "compress", steps=6, val_every=2), progress=False)
    vals = [r for r in read_log(run) if r["kind"] == "val"]
    best = min(vals, key=lambda r: r["rd_loss"])
    assert summary["best"] == pytest.approx(best["rd_loss"])
    model, _ = load_run(run, "best")
    assert model is not None


def test_progress_bar_shows_loss_and_throughput(tmp_path, images, capsys):
    train(cfg_for(tmp_path / "run", images, steps=3), progress=True)
    err = capsys.readouterr().err
    assert "train denoise" in err and "loss=" in err and "img_s=" in err and "3/3" in err


def test_learning_rate_warms_up_and_decays(tmp_path, images):
    run = tmp_path / "run"
    train(cfg_for(run, images, steps=100, log_every=10, val_every=100, crop=16, batch=1), progress=False)
    lrs = {r["step"]: r["lr"] for r in read_log(run) if r["kind"] == "train"}
    assert lrs[1] < lrs[10]  # warm-up over steps // 50
    assert lrs[10] > lrs[50] > lrs[90] > lrs[100] >= 0
    assert max(lrs.values()) <= 1e-3


# --- the `edgeae train` command ------------------------------------------------------------------------------


def invoke(*args):
    from click.testing import CliRunner

    from training.cli import train as train_cmd

    return CliRunner().invoke(train_cmd, [str(a) for a in args], catch_exceptions=True)


TINY = ("--steps", 4, "--batch", 2, "--crop", 32, "--width", 8, "--device", "cpu", "--val-every", 2,
        "--log-every", 1, "--threads", 1, "--no-progress")  # fmt: skip


def test_cli_help():
    r = invoke("--help")
    assert r.exit_code == 0
    for word in ("--task", "--data", "--out", "--steps", "--batch", "--crop", "--lr", "--device", "--resume",
                 "--seed", "--quality", "--channels", "--width", "--minutes", "--threads", "--collapse",
                 "torchrun", "safetensors", "report.md", "Exit status"):  # fmt: skip
        assert word in r.output, word


def test_cli_trains_writes_report_and_resumes(tmp_path, images):
    out = tmp_path / "runs" / "dn"
    r = invoke("--task", "denoise", "--data", images, "--out", out, *TINY)
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "best psnr" in r.output and "report.md" in r.output
    for name in ("report.md", "loss.png", "val.png", "best.safetensors", "summary.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert (cfg["steps"], cfg["batch"], cfg["crop"], cfg["width"], cfg["val_every"]) == (4, 2, 32, 8, 2)

    # an existing run folder needs --resume
    from edge_runtime.errors import UsageError

    r = invoke("--task", "denoise", "--data", images, "--out", out, *TINY)
    assert isinstance(r.exception, UsageError) and "pass --resume" in str(r.exception)

    # --resume keeps the run's options (task, width, ...) and lets --steps extend it
    r = invoke("--out", out, "--resume", "--steps", 6, "--no-progress", "--threads", 1)
    assert r.exit_code == 0, r.output + repr(r.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert (cfg["steps"], cfg["width"], cfg["crop"], cfg["task"]) == (6, 8, 32, "denoise")

    # ... but not the model's shape
    r = invoke("--out", out, "--resume", "--width", 16)
    assert isinstance(r.exception, UsageError) and "--width" in str(r.exception)
    r = invoke("--out", out, "--resume", "--task", "anomaly")
    assert isinstance(r.exception, UsageError) and "--task" in str(r.exception)


def test_cli_resume_needs_a_checkpoint(tmp_path):
    from edge_runtime.errors import UsageError

    r = invoke("--out", tmp_path / "nothing", "--resume")
    assert isinstance(r.exception, UsageError) and "nothing to resume" in str(r.exception)


def test_cli_errors(tmp_path, images):
    from edge_runtime.errors import BadDataError, UsageError

    r = invoke("--task", "denoise", "--data", tmp_path / "missing", "--out", tmp_path / "a", *TINY)
    assert isinstance(r.exception, BadDataError) and r.exception.exit_code == 3
    assert "missing" in str(r.exception)
    r = invoke("--data", images, "--out", tmp_path / "b", *TINY)
    assert isinstance(r.exception, UsageError) and "--task" in str(r.exception)
    r = invoke("--task", "denoise", "--data", images, "--out", tmp_path / "d", *TINY, "--crop", 128)
    assert isinstance(r.exception, BadDataError) and "larger than every image" in str(r.exception)
    r = invoke("--task", "segment", "--out", tmp_path / "e")
    assert r.exit_code == 2  # click's own usage error for a bad choice


def test_a_time_budget_warms_up_in_time_not_in_a_huge_step_cap(tmp_path, images):
    """--minutes with a --steps cap far beyond reach (the inspection default): the warm-up is 2 % of the time."""
    run = tmp_path / "run"
    summary = train(cfg_for(run, images, steps=100_000, minutes=0.05, val_every=100_000, lr=1e-3), progress=False)
    assert 0 < summary["steps"] < 2000  # the time ran out long before the step-counted warm-up (2,000) would end
    lrs = [r["lr"] for r in read_log(run) if r["kind"] == "train"]
    assert max(lrs) > 0.5e-3  # the peak learning rate was reached
