"""Checkpoints as safetensors + JSON: nothing is ever unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edge_runtime.errors import ModelRejectedError
from edge_runtime.io import atomic_path, atomic_write_text
from training.anomaly_model import AnomalyAE, AnomalyConfig
from training.compress_model import Codec, CompressConfig
from training.denoise_model import DenoiseConfig, DenoiseUNet

MODEL_CONFIGS = {"denoise": DenoiseConfig, "compress": CompressConfig, "anomaly": AnomalyConfig}


def build_model(task: str, model_cfg: dict) -> torch.nn.Module:
    if task not in MODEL_CONFIGS:
        raise ValueError(f"unknown task {task!r}")
    if task == "compress" and model_cfg.get("arch") == "hyper":
        from training.hyper_codec import HyperCodec, HyperConfig

        return HyperCodec(HyperConfig.from_dict(model_cfg))
    if task == "anomaly" and model_cfg.get("arch") == "inspect":
        from training.inspect_model import InspectConfig, InspectNet

        return InspectNet(InspectConfig(**{k: v for k, v in model_cfg.items() if k != "task"}))
    cfg = MODEL_CONFIGS[task](**{k: v for k, v in model_cfg.items() if k != "task"})
    if task == "denoise":
        return DenoiseUNet(cfg)
    if task == "compress":
        return Codec(cfg)
    return AnomalyAE(cfg)


def save_weights(module: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def load_run(run_dir: str | Path, which: str = "best") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a training run from config.json and {best,last}.safetensors (eval mode, CPU)."""
    run = Path(run_dir)
    cfg_path = run / "config.json"
    weights = run / f"{which}.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ModelRejectedError(f"{run}: not a training run (needs config.json and {which}.safetensors)")
    try:
        cfg = json.loads(cfg_path.read_text())
        model = build_model(cfg["task"], cfg["model"])
        model.load_state_dict(load_file(str(weights)))
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ModelRejectedError(f"{run}: checkpoint does not load ({exc})".splitlines()[0]) from exc
    model.eval()
    return model, cfg


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
