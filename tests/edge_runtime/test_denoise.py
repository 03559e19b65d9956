"""Denoising in the runtime: tiling without seams, folders and videos, bad inputs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_runtime import errors
from edge_runtime.cli import cli
from edge_runtime.commands import denoise_source
from edge_runtime.denoise import Denoiser, denoise_tiled, tile_starts


def _blur(tile: np.ndarray) -> np.ndarray:
    # A model whose output depends on context: near a tile's border it sees reflected padding, not the image.
    return cv2.GaussianBlur(tile, (0, 0), 3.0, borderType=cv2.BORDER_REFLECT_101)


def _texture(h, w, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (h // 8, w // 8, c), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


def test_tiles_cover_the_frame_with_overlap():
    for size, tile in [(100, 64), (1080, 512), (64, 64), (513, 256)]:
        starts = tile_starts(size, tile, 32, 8)
        assert starts[0] == 0 and starts[-1] + min(tile, size) == size
        for a, b in zip(starts, starts[1:], strict=False):
            assert b - a <= tile - 32  # neighbours share at least the overlap


def test_blended_tiles_show_no_seams():
    frame = _texture(200, 264)
    whole = _blur(frame).astype(np.int16)
    blended = denoise_tiled(_blur, frame, tile=96, overlap=32, multiple=8).astype(np.int16)
    # Naive tiling (no overlap) shows the tile borders; the blended result stays close to the whole-frame result.
    naive = np.zeros_like(frame)
    for y in range(0, 200, 96):
        for x in range(0, 264, 96):
            naive[y : y + 96, x : x + 96] = _blur(np.ascontiguousarray(frame[y : y + 96, x : x + 96]))
    err_blend = np.abs(blended - whole)
    err_naive = np.abs(naive.astype(np.int16) - whole)
    assert err_naive.max() > 4 * max(1, err_blend.max())
    assert err_blend.max() <= 3


def test_small_frames_are_not_tiled(make_bundle):
    den = Denoiser(make_bundle(("denoise",)), tile=1024)
    frame = _texture(48, 72)
    assert np.array_equal(den.denoise(frame), frame)


def test_tiled_identity_model_is_exact(make_bundle):
    den = Denoiser(make_bundle(("denoise",)), tile=64, overlap=16)
    frame = _texture(150, 210)
    assert np.array_equal(den.denoise(frame), frame)


def test_folder_with_a_corrupt_image_writes_the_rest_and_exits_3(make_bundle, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"img{i}.png"), _texture(32, 48, seed=i))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["denoise", str(make_bundle(("denoise",))), str(src), "-o", str(out)])
    assert res.exit_code == errors.BAD_DATA, res.output
    assert "1 input(s) could not be read" in res.stderr and "broken.png" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    assert np.array_equal(cv2.imread(str(out / "img1.png")), _texture(32, 48, seed=1))


def test_video_in_video_out_keeps_every_frame(make_bundle, tmp_path):
    path = tmp_path / "in.mkv"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (64, 48))
    frames = [_texture(48, 64, seed=i) for i in range(7)]
    for f in frames:
        w.write(f)
    w.release()
    stats = denoise_source(make_bundle(("denoise",)), str(path), str(tmp_path / "out.mkv"))
    assert stats["frames_processed"] == 7 and "error" not in stats
    cap = cv2.VideoCapture(str(tmp_path / "out.mkv"))
    got = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        got.append(f)
    assert len(got) == 7
    assert np.array_equal(got[3], frames[3])  # lossless container, identity model


def test_an_image_output_refuses_several_frames_and_leaves_nothing(make_bundle, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        cv2.imwrite(str(src / f"{i}.png"), _texture(32, 32, seed=i))
    (tmp_path / "o.png").write_bytes(b"previous")
    with pytest.raises(errors.UsageError, match="one frame"):
        denoise_source(make_bundle(("denoise",)), str(src), str(tmp_path / "o.png"))
    # Nothing replaced: the image is written on success only; no temp file remains.
    assert (tmp_path / "o.png").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------------------------------------------
# Frames whose colour differs from the model's: converted, one note, counted (issue 19)


def _gray_and_colour_folder(root):
    src = root / "in"
    src.mkdir()
    colour = _texture(32, 48, seed=1)
    gray = _texture(32, 48, c=3, seed=2)[:, :, 1].copy()
    cv2.imwrite(str(src / "a_colour.png"), colour)
    cv2.imwrite(str(src / "b_colour.png"), _texture(32, 48, seed=3))
    cv2.imwrite(str(src / "c_gray.png"), gray)
    return src, colour, gray


def test_colour_frames_to_a_gray_model_are_converted_with_one_note(make_bundle, tmp_path):
    src, colour, gray = _gray_and_colour_folder(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["denoise", str(make_bundle(("denoise",), channels=1)), str(src), "-o", str(out),
                                   "--stats", str(tmp_path / "s.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if "warning" in line]
    assert len(notes) == 1 and "gray (1 channel)" in notes[0] and "colour (3 channels)" in notes[0]
    assert "a_colour.png" in notes[0]
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["frames_converted"] == 2 and stats["frames_processed"] == 3
    # Identity model: the output is the frame's luma, written as a gray image.
    got = cv2.imread(str(out / "a_colour.png"), cv2.IMREAD_UNCHANGED)
    assert got.ndim == 2 and np.array_equal(got, cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY))
    assert np.array_equal(cv2.imread(str(out / "c_gray.png"), cv2.IMREAD_UNCHANGED), gray)


def test_gray_frames_to_a_colour_model_are_converted_with_one_note(make_bundle, tmp_path):
    src, colour, gray = _gray_and_colour_folder(tmp_path)
    (src / "d_gray.png").write_bytes((src / "c_gray.png").read_bytes())
    out = tmp_path / "out"
    stats_path = tmp_path / "s.json"
    res = CliRunner().invoke(cli, ["denoise", str(make_bundle(("denoise",), channels=3)), str(src), "-o", str(out),
                                   "--stats", str(stats_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if "warning" in line]
    assert len(notes) == 1 and "colour (3 channels)" in notes[0] and "gray (1 channel)" in notes[0]
    assert "c_gray.png" in notes[0]
    assert json.loads(stats_path.read_text())["frames_converted"] == 2
    got = cv2.imread(str(out / "c_gray.png"), cv2.IMREAD_UNCHANGED)
    assert got.shape == (32, 48, 3) and all(np.array_equal(got[..., k], gray) for k in range(3))
    assert np.array_equal(cv2.imread(str(out / "a_colour.png")), colour)


def test_help_documents_the_conversion():
    res = CliRunner().invoke(cli, ["denoise", "--help"])
    assert res.exit_code == 0 and "converted" in res.output and "frames_converted" in res.output


def test_matching_frames_give_no_note(make_bundle, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), _texture(32, 48))
    res = CliRunner().invoke(cli, ["denoise", str(make_bundle(("denoise",))), str(src), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0 and "warning" not in res.stderr


def test_frame_colour_channels():
    from edge_runtime.denoise import frame_colour_channels

    colour = _texture(40, 40)
    gray = colour[:, :, 1]
    assert frame_colour_channels(gray) == 1 and frame_colour_channels(gray[:, :, None]) == 1
    assert frame_colour_channels(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)) == 1
    assert frame_colour_channels(colour) == 3
    # One coloured pixel off the coarse grid of rows still makes a colour frame.
    almost = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    almost[17, 5, 2] ^= 1
    assert frame_colour_channels(almost) == 3


def test_unreadable_images_among_gray_and_colour_are_counted_and_skipped(make_bundle, tmp_path):
    src, _, _ = _gray_and_colour_folder(tmp_path)
    (src / "e_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (src / "f_empty.png").write_bytes(b"")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["denoise", str(make_bundle(("denoise",), channels=1)), str(src), "-o", str(out)])
    assert res.exit_code == errors.BAD_DATA, res.output
    assert "2 input(s) could not be read" in res.stderr and "e_broken.png" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_colour.png", "b_colour.png", "c_gray.png"]
