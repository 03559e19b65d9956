"""Training data: loading folders and videos, the fixed validation split, bad input (exit 3), patch sampling."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from train_images import texture, write_images  # noqa: E402

from edge_runtime.errors import BAD_DATA, BadDataError  # noqa: E402
from training.data import PatchSampler, center_crops, load_dataset, split  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402


def write_video(path: Path, frames: int = 20, size: int = 64) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (size, size))
    assert writer.isOpened()
    rng = np.random.default_rng(1)
    for _ in range(frames):
        writer.write(texture(rng, size))
    writer.release()
    return path


def tiny_cfg(tmp_path: Path, data: Path | str, **kw) -> TrainConfig:
    base = dict(task="denoise", data=str(data), out=str(tmp_path / "run"), steps=2, batch=2, crop=32, width=8,
                val_every=2, log_every=1, device="cpu", threads=1)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_folder_loads_sorted_and_converts_channels(tmp_path):
    d = write_images(tmp_path / "imgs", n=3)
    sub = d / "sub"
    sub.mkdir()
    cv2.imwrite(str(sub / "gray.png"), np.full((40, 48), 128, np.uint8))
    ds = load_dataset(d, 3)
    assert ds.names == ["img00.png", "img01.png", "img02.png", "sub/gray.png"]
    assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 for im in ds.images)
    assert ds.images[3].shape == (40, 48, 3)
    gray = load_dataset(d, 1)
    assert all(im.shape[2] == 1 for im in gray.images)
    assert ds.skipped == []


def test_16bit_and_alpha_images_become_8bit_bgr(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "deep.png"), np.full((32, 32, 3), 0x8000, np.uint16))
    cv2.imwrite(str(d / "alpha.png"), np.full((32, 32, 4), 200, np.uint8))
    ds = load_dataset(d, 3)
    assert [im.dtype for im in ds.images] == [np.uint8, np.uint8]
    assert [im.shape for im in ds.images] == [(32, 32, 3), (32, 32, 3)]
    assert ds.images[ds.names.index("deep.png")].max() == 0x80


def test_video_frames_every_stride(tmp_path):
    v = write_video(tmp_path / "clip.avi", frames=20)
    ds = load_dataset(v, 3)
    assert ds.names == ["clip.avi#0", "clip.avi#10"]
    assert all(im.shape == (64, 64, 3) for im in ds.images)
    assert len(load_dataset(v, 1, video_stride=5)) == 4


def test_samples_dataset_loads_without_download():
    pytest.importorskip("skimage")
    ds = load_dataset("samples", 3)
    assert len(ds) >= 10 and all(im.shape[2] == 3 for im in ds.images)


def test_comma_separated_specs_concatenate(tmp_path):
    a = write_images(tmp_path / "a", n=2)
    v = write_video(tmp_path / "clip.avi", frames=11)
    ds = load_dataset(f"{a},{v}", 3)
    assert len(ds) == 4


# --- the validation split ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 6, 13, 40])
def test_split_is_fixed_disjoint_and_by_name(tmp_path, n):
    ds = load_dataset(write_images(tmp_path / "imgs", n=n, size=16), 3)
    tr, va = split(ds)
    assert len(va) >= 1 and len(tr) >= 1
    assert set(tr.names).isdisjoint(va.names)
    assert sorted(tr.names + va.names) == sorted(ds.names)
    # the split depends on names only: shuffled input order gives the same sets
    order = np.random.default_rng(0).permutation(n)
    shuffled = type(ds)([ds.names[i] for i in order], [ds.images[i] for i in order])
    tr2, va2 = split(shuffled)
    assert tr2.names == tr.names and va2.names == va.names


def test_training_never_validates_on_a_training_image(tmp_path, monkeypatch):
    import training.train as tt

    d = write_images(tmp_path / "imgs", n=13)
    seen: dict[str, list[np.ndarray]] = {}
    real_task, real_sampler = tt.DenoiseTask.__init__, tt.PatchSampler.__init__

    def task_init(self, cfg, device, val_images):
        seen["val"] = list(val_images)
        real_task(self, cfg, device, val_images)

    def sampler_init(self, images, crop, seed):
        seen["train"] = list(images)
        real_sampler(self, images, crop, seed)

    monkeypatch.setattr(tt.DenoiseTask, "__init__", task_init)
    monkeypatch.setattr(tt.PatchSampler, "__init__", sampler_init)
    cfg = tiny_cfg(tmp_path, d)
    train(cfg, progress=False)
    sp = json.loads((Path(cfg.out) / "split.json").read_text())
    assert sp["val"] and sp["train"] and set(sp["train"]).isdisjoint(sp["val"])
    assert sorted(sp["train"] + sp["val"]) == [f"img{i:02d}.png" for i in range(13)]
    on_disk = {name: cv2.imread(str(d / name)) for name in sp["train"] + sp["val"]}
    assert len(seen["val"]) == len(sp["val"])
    for img in seen["val"]:
        assert any(np.array_equal(img, on_disk[n]) for n in sp["val"])
        assert not any(np.array_equal(img, on_disk[n]) for n in sp["train"])
    assert len(seen["train"]) == len(sp["train"])
    for img in seen["train"]:
        assert not any(np.array_equal(img, on_disk[n]) for n in sp["val"])
    # a second run over the same data makes the same split
    cfg2 = tiny_cfg(tmp_path, d, out=str(tmp_path / "run2"))
    train(cfg2, progress=False)
    assert json.loads((Path(cfg2.out) / "split.json").read_text()) == sp


# --- bad input: one clear error, exit 3 ----------------------------------------------------------------------


def _bad(fn, *match: str) -> BadDataError:
    with pytest.raises(BadDataError) as info:
        fn()
    assert info.value.exit_code == BAD_DATA == 3
    msg = str(info.value)
    assert "\n" not in msg
    for m in match:
        assert m in msg
    return info.value


def test_missing_path(tmp_path):
    _bad(lambda: load_dataset(tmp_path / "nope", 3), "nope", "no such file")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    _bad(lambda: load_dataset(tmp_path / "empty", 3), "empty", "no images found")
    _bad(lambda: train(tiny_cfg(tmp_path, tmp_path / "empty"), progress=False), "no images found")


def _write_corrupt(folder: Path, good: Path | None = None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "garbage.png").write_bytes(b"this is not a png at all" * 10)
    (folder / "empty.jpg").write_bytes(b"")
    names = ["empty.jpg", "garbage.png"]
    if good is not None:  # a real PNG cut in half
        data = good.read_bytes()
        (folder / "truncated.png").write_bytes(data[: len(data) // 3])
        names.append("truncated.png")
    return names


def test_folder_of_only_corrupt_images(tmp_path):
    _write_corrupt(tmp_path / "bad")
    err = _bad(lambda: load_dataset(tmp_path / "bad", 3), "none of 2 images could be read")
    assert str(tmp_path / "bad") in str(err)


def test_corrupt_images_among_good_are_skipped_and_listed(tmp_path):
    d = write_images(tmp_path / "imgs", n=6)
    bad = _write_corrupt(d, good=d / "img00.png")
    ds = load_dataset(d, 3)
    assert len(ds) == 6
    assert sorted(Path(s).name for s in ds.skipped) == sorted(bad)
    cfg = tiny_cfg(tmp_path, d)
    train(cfg, progress=False)
    sp = json.loads((Path(cfg.out) / "split.json").read_text())
    assert sorted(Path(s).name for s in sp["skipped"]) == sorted(bad)
    assert not set(bad) & set(sp["train"] + sp["val"])


def test_video_that_does_not_open(tmp_path):
    v = tmp_path / "broken.avi"
    v.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _bad(lambda: load_dataset(v, 3), "broken.avi", "does not open")
    _bad(lambda: train(tiny_cfg(tmp_path, v), progress=False), "broken.avi")


def test_crop_larger_than_every_image(tmp_path):
    d = write_images(tmp_path / "imgs", n=3, size=24)
    _bad(lambda: train(tiny_cfg(tmp_path, d, crop=32), progress=False), "crop 32", "larger than every image",
         "24x24")  # fmt: skip


def test_bad_options_are_usage_errors(tmp_path):
    from edge_runtime.errors import UsageError

    for kw in (dict(task="segment"), dict(steps=0), dict(crop=8), dict(channels=2), dict(collapse="maybe"),
               dict(minutes=0)):  # fmt: skip
        with pytest.raises(UsageError):
            tiny_cfg(tmp_path, "samples", **kw)


# --- sampling ------------------------------------------------------------------------------------------------


def test_patch_sampler_shapes_determinism_and_small_images(tmp_path):
    rng = np.random.default_rng(0)
    images = [texture(rng, 64), texture(rng, 64), np.zeros((20, 80, 3), np.uint8)]
    a = PatchSampler(images, 32, seed=5)
    assert len(a.images) == 2  # the 20-pixel-high image cannot give a 32 crop
    batch = a.sample(4)
    assert batch.shape == (4, 32, 32, 3) and batch.dtype == np.uint8
    b = PatchSampler(images, 32, seed=5)
    assert np.array_equal(b.sample(4), batch)
    assert not np.array_equal(PatchSampler(images, 32, seed=6).sample(4), batch)
    # every patch is a (flipped / transposed) crop of a source image
    for patch in batch:
        variants = {patch.tobytes(), patch[:, ::-1].tobytes(), patch[::-1].tobytes(), patch[::-1, ::-1].tobytes()}
        t = patch.transpose(1, 0, 2)
        variants |= {t.tobytes(), t[:, ::-1].tobytes(), t[::-1].tobytes(), t[::-1, ::-1].tobytes()}
        found = any(
            im[y : y + 32, x : x + 32].tobytes() in variants for im in images[:2] for y in range(33) for x in range(33)
        )
        assert found


def test_center_crops_respect_the_multiple():
    imgs = [np.zeros((300, 500, 3), np.uint8), np.zeros((70, 50, 1), np.uint8), np.zeros((5, 5, 3), np.uint8)]
    out = center_crops(imgs, 256, 16)
    assert [o.shape for o in out] == [(256, 256, 3), (64, 48, 1)]
