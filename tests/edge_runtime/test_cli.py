"""The CLI: help texts, one-line errors, exit codes."""

from __future__ import annotations

import importlib

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_runtime import errors
from edge_runtime.cli import LAZY_COMMANDS, cli

RUNTIME_COMMANDS = ["denoise", "score", "calibrate", "compress", "decompress", "run"]


@pytest.mark.parametrize("name", RUNTIME_COMMANDS + list(LAZY_COMMANDS))
def test_every_command_has_a_real_help(name):
    res = CliRunner().invoke(cli, [name, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage: cli " in res.output or "Usage: edgeae " in res.output or "Usage:" in res.output
    body = res.output.split("\n\n", 2)[1]
    assert len(body.split()) >= 5  # a sentence, not an empty docstring


def test_group_help_lists_all_commands_and_exit_codes():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for name in RUNTIME_COMMANDS + list(LAZY_COMMANDS):
        assert name in res.output
    assert "130 interrupted" in res.output


def test_missing_model_is_exit_4_one_line(tmp_path):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((16, 16, 3), np.uint8))
    res = CliRunner().invoke(cli, ["denoise", str(tmp_path / "nope"), str(img), "-o", str(tmp_path / "o.png")])
    assert res.exit_code == errors.MODEL_REJECTED
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert err.count("\n") == 1 and "nope" in err and "Traceback" not in err


def test_bad_input_path_is_exit_3_naming_the_path(make_bundle, tmp_path):
    bundle = make_bundle(("denoise",))
    res = CliRunner().invoke(
        cli, ["denoise", str(bundle), str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png")]
    )
    assert res.exit_code == errors.BAD_DATA
    # the model loads first: --device auto says its choice in one line, then the error is one line
    auto, error = res.stderr.splitlines()
    assert auto.startswith("edgeae: device auto -> cpu fp32") and "missing.png" in error
    assert not (tmp_path / "o.png").exists()


def test_debug_shows_the_traceback(make_bundle, tmp_path):
    bundle = make_bundle(("denoise",))
    res = CliRunner().invoke(cli, ["--debug", "denoise", str(bundle), str(tmp_path / "x.png"), "-o", "o.png"])
    assert isinstance(res.exception, errors.BadDataError)


def test_torch_side_command_without_torch_says_install_train(monkeypatch):
    real = importlib.import_module

    def fake_import(name, *a, **k):
        if name == "training.cli":
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    res = CliRunner().invoke(cli, ["train", "--task", "denoise"])
    assert res.exit_code == errors.USAGE
    assert "install edgeae[train]" in res.stderr
    assert "Traceback" not in res.output


def test_ctrl_c_is_exit_130(make_bundle, tmp_path, monkeypatch):
    bundle = make_bundle(("denoise",))
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((16, 16, 3), np.uint8))

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("edge_runtime.commands.denoise_source", interrupt)
    res = CliRunner().invoke(cli, ["denoise", str(bundle), str(img), "-o", str(tmp_path / "o.png")])
    assert res.exit_code == errors.INTERRUPTED


def test_denoise_an_image_end_to_end(make_bundle, tmp_path):
    bundle = make_bundle(("denoise",))
    img = tmp_path / "a.png"
    frame = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    cv2.imwrite(str(img), frame)
    out = tmp_path / "out.png"
    stats = tmp_path / "stats.json"
    res = CliRunner().invoke(cli, ["denoise", str(bundle), str(img), "-o", str(out), "--stats", str(stats)])
    assert res.exit_code == 0, res.output
    assert np.array_equal(cv2.imread(str(out)), frame)  # identity graph, padding cropped back
    assert "inference" in res.output and stats.is_file()
