"""The training loop shared by the three tasks: AdamW + cosine, AMP on CUDA, JSONL log, safetensors checkpoints.

Each task is a small class with ``model``, ``loss(model, batch)`` and ``validate(model)``; the loop around them
handles schedules, time budgets, checkpoints, resume, rollback on non-finite losses, DDP and logging.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_runtime.errors import BadDataError, UsageError
from training import health
from training.anomaly_model import AnomalyAE, AnomalyConfig, anomaly_map, image_score, ssim_map
from training.checkpoint import save_tensors, save_weights, write_json
from training.compress_model import Codec, CompressConfig, rd_loss
from training.data import PatchSampler, center_crops, load_dataset, split
from training.defects import DEFECT_KINDS, corrupt, paste_defect
from training.denoise_model import DenoiseConfig, DenoiseUNet
from training.inspect_model import InspectConfig, InspectNet, focal_loss, standardize
from training.inspect_model import image_score as inspect_score
from training.layers import count_macs, count_params
from training.metrics import auroc, psnr
from training.noise import add_noise, jpeg_artefacts, quantize8
from training.synth import synth_batch

TASKS = ("denoise", "compress", "anomaly")
# Architectures per task, the default first. anomaly: "inspect" (segmentation of synthetic defects, for parts and
# surfaces whose position varies) or "scene" (the fixed-camera autoencoder calibrated per location).
ARCHS = {"denoise": ("plain",), "compress": ("factorized", "hyper"), "anomaly": ("inspect", "scene")}
# Options whose defaults depend on the task and architecture (the command line's None means "this table").
OPTION_DEFAULTS = {"steps": 2000, "batch": 16, "crop": 96, "lr": 1e-3}
ARCH_DEFAULTS = {
    # Chosen in two short trials on ELPV solar cells (256-px crops, batch 8 and straight cracks: 0.83 image AUROC
    # after 8 minutes, where 160-px crops, batch 16 and curvier cracks gave 0.76; two changes at once, so only
    # a hint); the time cap keeps a run with no --steps/--minutes inside 20 minutes on 2 CPU cores
    # (benchmarks/inspect_bench.py measures the result).
    ("anomaly", "inspect"): {"steps": 100000, "batch": 8, "crop": 256, "lr": 2e-3, "minutes": 18.0},
}
MIN_INSPECT_IMAGES = 20  # normal images the inspection model needs: 1 in 8 is held out for its threshold


def option_defaults(task: str, arch: str | None) -> dict:
    """The defaults of --steps/--batch/--crop/--lr (and --minutes) for ``task`` with ``arch`` (None: default)."""
    arch = arch or ARCHS.get(task, ("",))[0]
    return {**OPTION_DEFAULTS, **ARCH_DEFAULTS.get((task, arch), {})}


@dataclass(frozen=True)
class TrainConfig:
    task: str
    data: str = "samples"
    out: str = "runs/default"
    steps: int = 2000
    batch: int = 16
    crop: int = 96
    lr: float = 1e-3
    weight_decay: float = 1e-4
    device: str = "auto"
    seed: int = 0
    quality: int = 2  # compression quality level (lambda)
    channels: int = 3
    width: int | None = None
    minutes: float | None = None  # time budget: the cosine schedule runs on elapsed time when set
    val_every: int = 250
    log_every: int = 25
    grad_clip: float = 1.0
    max_rollbacks: int = 3
    collapse: str = "warn"  # warn | stop | off
    jpeg_fraction: float = 0.1  # denoise: share of samples with JPEG artefacts instead of sensor noise
    val_images: int = 16
    threads: int | None = None  # torch intra-op threads (None: PyTorch's default)
    init: str | None = None  # safetensors weights to start from (fine-tuning); not a resume
    arch: str | None = None  # compress: factorized | hyper; anomaly: inspect | scene (None: the task's default)

    def __post_init__(self):
        if self.task not in TASKS:
            raise UsageError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.steps < 1 or self.batch < 1 or self.crop < 16:
            raise UsageError("--steps and --batch must be >= 1 and --crop >= 16")
        if self.channels not in (1, 3):
            raise UsageError(f"--channels must be 1 or 3, got {self.channels}")
        if self.collapse not in ("warn", "stop", "off"):
            raise UsageError("--collapse must be warn, stop or off")
        if self.minutes is not None and self.minutes <= 0:
            raise UsageError("--minutes must be positive")
        arch = self.arch or ARCHS[self.task][0]
        if self.task != "compress" and arch == "factorized":
            arch = "scene" if self.task == "anomaly" else "plain"  # runs from before per-task architectures
        if arch not in ARCHS[self.task]:
            raise UsageError(f"--arch for --task {self.task} must be one of {', '.join(ARCHS[self.task])}, "
                             f"got {arch!r}")  # fmt: skip
        object.__setattr__(self, "arch", arch)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available to PyTorch")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def to_tensor(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1] on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(batch))
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def from_tensor(x: torch.Tensor) -> np.ndarray:
    """float (1, C, H, W) -> uint8 (H, W, C), rounded like the exported graph."""
    return torch.round(x.clamp(0, 1) * 255).to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()


class DenoiseTask:
    metric, higher_is_better = "psnr", True

    def __init__(self, cfg: TrainConfig, device: torch.device, val_images: list[np.ndarray]):
        self.cfg, self.device = cfg, device
        self.model_cfg = DenoiseConfig(channels=cfg.channels, width=cfg.width or 32)
        self.model = DenoiseUNet(self.model_cfg)
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        self.rng = np.random.default_rng(cfg.seed + 2)
        self.val = center_crops(val_images, 256, self.model_cfg.multiple)
        vrng = np.random.default_rng(1234)  # fixed validation noise, sigma 25, clipped to uint8
        self.val_noisy = [np.clip(np.round(v + vrng.normal(0, 25, v.shape)), 0, 255).astype(np.uint8) for v in self.val]

    def loss(self, model: nn.Module, batch: np.ndarray) -> tuple[torch.Tensor, dict]:
        n_jpeg = int(round(len(batch) * self.cfg.jpeg_fraction))
        clean = to_tensor(batch, self.device)
        if self.cfg.channels == 3:  # colour jitter: per-channel gain and a global gamma
            gain = 1 + 0.1 * (torch.rand(len(batch), 3, 1, 1, generator=self.gen, device=self.device) - 0.5)
            gamma = torch.exp(0.2 * (torch.rand(len(batch), 1, 1, 1, generator=self.gen, device=self.device) - 0.5))
            clean = quantize8((clean * gain).clamp(0, 1) ** gamma)
        noisy, _ = add_noise(clean, self.gen)
        if n_jpeg:
            jpeg = to_tensor(jpeg_artefacts(batch[:n_jpeg], self.rng), self.device)
            clean = torch.cat([to_tensor(batch[:n_jpeg], self.device), clean[n_jpeg:]])
            noisy = torch.cat([jpeg, noisy[n_jpeg:]])
        out = model(noisy)
        loss = nn.functional.mse_loss(out.float(), clean)
        return loss, {}

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict:
        vals = []
        for clean, noisy in zip(self.val, self.val_noisy, strict=True):
            out = model(to_tensor(noisy[None], self.device))
            vals.append(psnr(from_tensor(out.float()), clean))
        return {"psnr": float(np.mean(vals)) if vals else float("nan")}


class CompressTask:
    metric, higher_is_better = "rd_loss", False

    def __init__(self, cfg: TrainConfig, device: torch.device, val_images: list[np.ndarray]):
        self.cfg, self.device = cfg, device
        self.model_cfg = CompressConfig(channels=cfg.channels, n=cfg.width or 64, quality=cfg.quality)
        self.model = Codec(self.model_cfg)
        self.val = center_crops(val_images, 256, self.model_cfg.multiple)

    def loss(self, model: nn.Module, batch: np.ndarray) -> tuple[torch.Tensor, dict]:
        x = to_tensor(batch, self.device)
        x_hat, lik = model(x)
        loss, bpp, mse = rd_loss(x, x_hat, lik, self.model_cfg.lmbda)
        return loss, {"bpp": bpp.item(), "psnr": float(10 * torch.log10(1 / mse.detach().clamp_min(1e-10)))}

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict:
        bpps, psnrs, losses, lat = [], [], [], []
        for img in self.val:
            x = to_tensor(img[None], self.device)
            x_hat, lik = model(x)
            loss, bpp, _ = rd_loss(x, x_hat.clamp(0, 1), lik, self.model_cfg.lmbda)
            bpps.append(float(bpp))
            psnrs.append(psnr(from_tensor(x_hat), img))
            losses.append(float(loss))
            lat.append(model.g_a(x).mean(dim=(2, 3), keepdim=True))
        out = {"rd_loss": float(np.mean(losses)), "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))}
        if len(lat) > 1:
            out.update(health.latent_health(torch.cat(lat)))
        return out


def defect_validation(val_images: list[np.ndarray], size: int, multiple: int) -> tuple[list, list, list]:
    """Held-out normal crops and a copy of each with one ``paste_defect`` defect: (images, labels, masks)."""
    crops = center_crops(val_images, size, multiple)
    vrng = np.random.default_rng(4321)
    images, labels, masks = [], [], []
    for i, img in enumerate(crops):
        images.append(img)
        labels.append(0)
        masks.append(np.zeros(img.shape[:2], np.uint8))
        donor = crops[(i + 1) % len(crops)]
        bad, mask = paste_defect(img, vrng, DEFECT_KINDS[i % len(DEFECT_KINDS)], donor)
        images.append(bad)
        labels.append(1)
        masks.append(mask)
    return images, labels, masks


class AnomalyTask:
    """The fixed-camera model (``--arch scene``): an autoencoder scored by structural error and features."""

    metric, higher_is_better = "image_auroc", True

    def __init__(self, cfg: TrainConfig, device: torch.device, val_images: list[np.ndarray]):
        self.cfg, self.device = cfg, device
        self.model_cfg = AnomalyConfig(channels=cfg.channels, width=cfg.width or 32)
        self.model = AnomalyAE(self.model_cfg)
        self.rng = np.random.default_rng(cfg.seed + 3)
        self.val, self.val_labels, self.val_masks = defect_validation(val_images, 128, self.model_cfg.multiple)

    def loss(self, model: nn.Module, batch: np.ndarray) -> tuple[torch.Tensor, dict]:
        clean = to_tensor(batch, self.device)
        x = to_tensor(corrupt(batch, self.rng), self.device)
        recon, _ = model(x)
        recon = recon.float()
        loss = nn.functional.l1_loss(recon, clean) + (1 - ssim_map(recon, clean, self.model_cfg.ssim_window)).mean()
        return loss, {}

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict:
        scores, lat, pix_s, pix_l = [], [], [], []
        for img, mask in zip(self.val, self.val_masks, strict=True):
            x = to_tensor(img[None], self.device)
            recon, feat = model(x)
            amap = anomaly_map(x, recon.float(), self.model_cfg.ssim_window)
            scores.append(float(image_score(amap, self.model_cfg.score_window)[0]))
            pix_s.append(amap[0].cpu().numpy().ravel()[::7])
            pix_l.append(mask.ravel()[::7])
            lat.append(feat.float().mean(dim=(2, 3), keepdim=True))
        return _anomaly_metrics(scores, self.val_labels, pix_s, pix_l, lat)


class InspectTask:
    """The inspection model (``--arch inspect``, training.inspect_model): segmentation of synthetic defects."""

    metric, higher_is_better = "image_auroc", True

    def __init__(self, cfg: TrainConfig, device: torch.device, val_images: list[np.ndarray]):
        self.cfg, self.device = cfg, device
        self.model_cfg = InspectConfig(channels=cfg.channels, width=cfg.width or 24)
        self.model = InspectNet(self.model_cfg)
        self.rng = np.random.default_rng(cfg.seed + 3)
        self.val, self.val_labels, self.val_masks = defect_validation(val_images, 256, self.model_cfg.multiple)

    def loss(self, model: nn.Module, batch: np.ndarray) -> tuple[torch.Tensor, dict]:
        images, masks = synth_batch(batch, self.rng)
        x = standardize(to_tensor(images, self.device))
        # A defect cell of the 1/4-scale map is one that holds any defect pixel: a 1-px crack still counts.
        target = nn.functional.max_pool2d(torch.from_numpy(masks)[:, None].to(self.device), 4)
        logits, _ = model(x)
        return 10.0 * focal_loss(logits.float(), target), {}

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict:
        scores, lat, pix_s, pix_l = [], [], [], []
        for img, mask in zip(self.val, self.val_masks, strict=True):
            logits, feat = model(standardize(to_tensor(img[None], self.device)))
            prob = torch.sigmoid(logits.float())
            scores.append(float(inspect_score(prob, self.model_cfg.score_window)[0]))
            up = nn.functional.interpolate(prob, size=mask.shape, mode="bilinear", align_corners=False)
            pix_s.append(up[0, 0].cpu().numpy().ravel()[::7])
            pix_l.append(mask.ravel()[::7])
            lat.append(feat.float().mean(dim=(2, 3), keepdim=True))
        return _anomaly_metrics(scores, self.val_labels, pix_s, pix_l, lat)


def _anomaly_metrics(scores: list, labels: list, pix_s: list, pix_l: list, lat: list) -> dict:
    """Image AUROC (normal vs defective copies), pixel AUROC on the defect masks, latent health."""
    labels = np.array(labels)
    out = {"image_auroc": auroc(np.array(scores), labels) if len(set(labels)) == 2 else float("nan")}
    pl = np.concatenate(pix_l)
    if pl.any():
        out["pixel_auroc"] = auroc(np.concatenate(pix_s), pl)
    out.update(health.latent_health(torch.cat(lat)))
    return out


TASK_CLASSES = {"denoise": DenoiseTask, "compress": CompressTask, "anomaly": AnomalyTask}


def _dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class _State:
    step: int = 0
    best: float | None = None
    lr_scale: float = 1.0
    rollbacks: int = 0
    elapsed: float = 0.0
    warnings: list[str] = field(default_factory=list)
    rng: dict = field(default_factory=dict)  # numpy generator states at the checkpoint (exact resume)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def _rng_state(sampler: PatchSampler, task) -> tuple[dict, dict[str, torch.Tensor]]:
    """The random streams the loop draws from: numpy states (JSON) and torch states (tensors)."""
    np_states = {"sampler": sampler.rng.bit_generator.state}
    if isinstance(getattr(task, "rng", None), np.random.Generator):
        np_states["task"] = task.rng.bit_generator.state
    tensors = {"torch_cpu": torch.get_rng_state()}
    if isinstance(getattr(task, "gen", None), torch.Generator):
        tensors["task_gen"] = task.gen.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    return np_states, tensors


def _restore_rng(sampler: PatchSampler, task, np_states: dict, tensors: dict[str, torch.Tensor]) -> bool:
    if "sampler" not in np_states or "torch_cpu" not in tensors:
        return False
    sampler.rng.bit_generator.state = np_states["sampler"]
    if "task" in np_states and isinstance(getattr(task, "rng", None), np.random.Generator):
        task.rng.bit_generator.state = np_states["task"]
    torch.set_rng_state(tensors["torch_cpu"])
    if "task_gen" in tensors and isinstance(getattr(task, "gen", None), torch.Generator):
        task.gen.set_state(tensors["task_gen"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    return True


def _crop(cfg: TrainConfig, ds) -> int:
    """The patch side: ``cfg.crop``, except that the inspection model trains on every image, so its crop shrinks
    to the smallest image (a multiple of 16, at least 64). Too few images for it is an error naming the need."""
    if cfg.arch != "inspect":
        return cfg.crop
    if len(ds) < MIN_INSPECT_IMAGES:
        raise BadDataError(f"{cfg.data}: {len(ds)} normal image(s); the inspection model needs at least "
                           f"{MIN_INSPECT_IMAGES} (a few hundred for a trustworthy threshold)")  # fmt: skip
    smallest = min(min(im.shape[:2]) for im in ds.images) // 16 * 16
    if smallest < 64:
        raise BadDataError(f"{cfg.data}: an image is smaller than 64 px on a side; the inspection model needs "
                           "at least 64x64")  # fmt: skip
    return min(cfg.crop, smallest)


def train(cfg: TrainConfig, progress: bool = True, loss_hook=None) -> dict:
    """Run one training job; returns the summary also written to ``OUT/summary.json``.

    ``loss_hook(step, loss) -> loss`` lets tests inject faults (a NaN) into the loop.
    """
    from safetensors.torch import load_file

    rank, world = _dist_info()
    device = pick_device(cfg.device)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    ds = load_dataset(cfg.data, cfg.channels)
    train_ds, val_ds = split(ds)
    if cfg.arch == "hyper":
        from training.hyper_codec import HyperCompressTask

        task = HyperCompressTask(cfg, device, val_ds.images[: cfg.val_images])
    elif cfg.arch == "inspect":
        task = InspectTask(cfg, device, val_ds.images[: cfg.val_images])
    else:
        task = TASK_CLASSES[cfg.task](cfg, device, val_ds.images[: cfg.val_images])
    crop = _crop(cfg, ds)
    sampler = PatchSampler(train_ds.images, crop, cfg.seed + 1000 * rank)
    model = task.model.to(device)
    if device.type == "cuda" and cfg.task != "compress":
        model = model.to(memory_format=torch.channels_last)
    example = torch.zeros(1, cfg.channels, 256, 256, device=device)
    macs = count_macs(model, example) / (256 * 256)
    run_cfg = {"task": cfg.task, "model": json.loads(task.model_cfg.to_json()), "train": asdict(cfg),
               "macs_per_pixel": round(macs), "params": count_params(model), "crop_used": crop}  # fmt: skip
    if rank == 0:
        write_json(out / "config.json", run_cfg)
        write_json(out / "split.json", {"data": cfg.data, "train": train_ds.names, "val": val_ds.names,
                                        "skipped": ds.skipped})  # fmt: skip

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    st = _State()
    if cfg.init:
        model.load_state_dict(load_file(cfg.init))
    if (out / "state.json").is_file() and (out / "last.safetensors").is_file():
        saved = json.loads((out / "state.json").read_text())
        st = _State(**{k: v for k, v in saved.items() if k in _State.__dataclass_fields__})
        model.load_state_dict(load_file(str(out / "last.safetensors")))
        if (out / "optim.safetensors").is_file():
            _load_optimizer(opt, {k: v.to(device) for k, v in load_file(str(out / "optim.safetensors")).items()})
        # Rank 0 saved its random streams with the checkpoint: restoring them makes an interrupted and resumed
        # run identical to an uninterrupted one. Other ranks (and older runs) draw a fresh sampler stream.
        rng_file = out / "rng.safetensors"
        if not (rank == 0 and rng_file.is_file() and _restore_rng(sampler, task, st.rng, load_file(str(rng_file)))):
            sampler.rng = np.random.default_rng([cfg.seed, st.step, rank])
    ddp_model = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model)

    use_amp = device.type == "cuda" and cfg.task != "compress"
    log_path = out / "log.jsonl"
    snapshot = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    bar = None
    if progress and rank == 0:
        try:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=st.step, desc=f"train {cfg.task}", unit="step", dynamic_ncols=True)
        except ImportError:  # pragma: no cover
            bar = None
    t0 = time.monotonic() - st.elapsed
    seen = 0
    t_log = time.monotonic()

    def frac_done(step: int) -> float:
        f = step / cfg.steps
        if cfg.minutes:
            f = max(f, (time.monotonic() - t0) / (cfg.minutes * 60))
        return f

    def evaluate_and_save(step: int) -> dict:
        model.eval()
        metrics = task.validate(model)
        model.train()
        rec = {"step": step, "kind": "val", "elapsed_s": round(time.monotonic() - t0, 1), **metrics}
        if "latent_var_total" in metrics and cfg.collapse != "off" and health.is_collapsed(metrics):
            msg = (f"latents collapsed at step {step}: total variance {metrics['latent_var_total']:.3g}, "
                   f"effective rank {metrics['latent_effective_rank']:.2f}")  # fmt: skip
            st.warnings.append(msg)
            rec["warning"] = msg
            if bar is not None:
                bar.write(f"warning: {msg}")
        value = metrics.get(task.metric, float("nan"))
        improved = math.isfinite(value) and (
            st.best is None or (value > st.best if task.higher_is_better else value < st.best)
        )
        if improved:
            st.best = value
            save_weights(model, out / "best.safetensors")
        st.step, st.elapsed = step, time.monotonic() - t0
        save_weights(model, out / "last.safetensors")
        save_tensors(_optimizer_tensors(opt), out / "optim.safetensors")
        st.rng, rng_tensors = _rng_state(sampler, task)
        save_tensors(rng_tensors, out / "rng.safetensors")
        write_json(out / "state.json", asdict(st))
        with open(log_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if "warning" in rec and cfg.collapse == "stop":
            raise BadDataError(f"{out}: training stopped: {rec['warning']} (--collapse warn to continue)")
        return metrics

    model.train()
    step = st.step
    last_metrics: dict = {}
    while step < cfg.steps:
        done = frac_done(step)
        if world > 1:
            import torch.distributed as dist

            flag = torch.tensor([1.0 if done >= 1 else 0.0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            done = 1.0 if flag.item() > 0 else done
        if done >= 1:
            break
        # warm-up over the first 2 % of the schedule, counted in steps or (with --minutes) in time, whichever ends
        # first: a large --steps cap under a time budget must not spend the budget warming up
        warm = min(1.0, max((step + 1) / max(1, cfg.steps // 50), done / 0.02))
        lr = cfg.lr * st.lr_scale * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = sampler.sample(cfg.batch)
        if hasattr(task, "set_step"):  # tasks whose training changes with the schedule (hyper: integer rounding)
            task.set_step(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, extra = task.loss(ddp_model, batch)
        if loss_hook is not None:
            loss = loss_hook(step, loss)
        bad = not bool(torch.isfinite(loss.detach()))
        if world > 1:  # every rank rolls back together, or the others would wait forever in the all-reduce
            import torch.distributed as dist

            flag = torch.tensor([1.0 if bad else 0.0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = flag.item() > 0
        if bad:
            st.rollbacks += 1
            msg = f"non-finite loss at step {step}: rolled back and halved the learning rate"
            if st.rollbacks > cfg.max_rollbacks:
                raise BadDataError(
                    f"{out}: training diverged: non-finite loss at step {step} after {cfg.max_rollbacks} "
                    "rollbacks with halved learning rates (try a lower --lr)"
                )
            model.load_state_dict(snapshot[0])
            opt.load_state_dict(snapshot[1])
            st.lr_scale *= 0.5
            st.warnings.append(msg)
            if rank == 0:
                with open(log_path, "a") as fh:
                    fh.write(json.dumps({"step": step, "kind": "rollback", "lr_scale": st.lr_scale}) + "\n")
            if bar is not None:
                bar.write(f"warning: {msg}")
            step += 1
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        step += 1
        seen += cfg.batch
        if bar is not None:
            bar.update(1)
        if rank == 0 and (step % cfg.log_every == 0 or step == 1):
            now = time.monotonic()
            rate = seen / max(now - t_log, 1e-9)
            seen, t_log = 0, now
            rec = {"step": step, "kind": "train", "loss": loss.item(), "lr": lr, "grad_norm": gnorm,
                   "img_per_s": round(rate, 1), "elapsed_s": round(now - t0, 1), **extra}  # fmt: skip
            with open(log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.4g}", img_s=f"{rate:.0f}")
        if step % cfg.val_every == 0:
            if rank == 0:
                last_metrics = evaluate_and_save(step)
            # every rank keeps the same rollback point (the replicas are identical under DDP)
            snapshot = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    if bar is not None:
        bar.close()
    summary = {}
    if rank == 0:
        if st.step != step or not last_metrics:
            last_metrics = evaluate_and_save(step)
        summary = {"task": cfg.task, "steps": step, "elapsed_s": round(time.monotonic() - t0, 1),
                   "best": st.best, "metric": task.metric, "final": last_metrics, "warnings": st.warnings,
                   "macs_per_pixel": run_cfg["macs_per_pixel"], "params": run_cfg["params"]}  # fmt: skip
        write_json(out / "summary.json", summary)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return summary
