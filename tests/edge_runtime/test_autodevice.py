"""--device auto (edge_runtime/autodevice.py): candidates, the output check, the choice, its cache, edgeae doctor.

Only the CPU provider exists here; the paths of the others run through provider lists given to ``measure``
(onnxruntime is asked to create each one for real and cannot: the row says why), not through fake sessions.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_runtime import autodevice
from edge_runtime.cli import cli
from edge_runtime.errors import UsageError
from edge_runtime.model import load_bundle, open_graph

CPU = "CPUExecutionProvider"
ALL = ("fp32", "fp16", "int8")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A cache directory of this test's own."""
    path = tmp_path / "cache"
    monkeypatch.setenv("EDGEAE_CACHE_DIR", str(path))
    return path


def lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


def set_gate(rewrite_manifest, root: Path, name: str, gate: str) -> None:
    rewrite_manifest(root, edit=lambda m: m["files"][name].update(gate=gate))


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEAE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert autodevice.cache_dir() == tmp_path / "xdg" / "edgeae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert autodevice.cache_dir() == tmp_path / "home" / ".cache" / "edgeae"
    monkeypatch.setenv("EDGEAE_CACHE_DIR", str(tmp_path / "mine"))
    assert autodevice.cache_dir() == tmp_path / "mine"


def test_the_choice_is_measured_said_in_one_line_and_cached(make_bundle, capsys, cache):
    bundle = make_bundle(("denoise",), ALL)
    graph = open_graph(bundle, "denoise", "auto", device="auto")
    first = lines(capsys)
    assert len(first) == 1 and first[0].startswith(f"edgeae: device auto -> cpu {graph.info.precision} (")
    assert f"at 256x256; 3 candidates, table: edgeae doctor {bundle})" in first[0]
    assert graph.providers == [CPU] and graph.device == "cpu"
    files = list(cache.iterdir())
    assert [f.name for f in files] == [autodevice.cache_path(bundle).name]  # no temporary file left behind
    data = json.loads(files[0].read_text())
    assert data["format"] == "edgeae-device-cache" and data["machine"]["providers"][-1] == CPU
    (choice,) = data["choices"].values()
    assert {r["precision"] for r in choice["rows"] if r["device"] == "cpu"} == set(ALL)
    assert open_graph(bundle, "denoise", "auto", device="auto").info.precision == graph.info.precision
    (again,) = lines(capsys)
    assert again.startswith(f"edgeae: device auto -> cpu {graph.info.precision} (cached: ")


def test_the_fastest_that_passes_is_chosen(make_bundle):
    choice = autodevice.measure(make_bundle(("denoise",), ALL), available=[CPU])
    passed = [r for r in choice.rows if r.status in ("chosen", "passed")]
    assert len(passed) == 3 and all(r.ms is not None and r.diff == 0 for r in passed)
    best = min(passed, key=lambda r: r.ms)
    assert (choice.device, choice.precision, choice.ms) == (best.device, best.precision, best.ms)
    assert best.status == "chosen"


def test_an_explicit_device_or_precision_wins_and_says_nothing(make_bundle, capsys):
    bundle = make_bundle(("denoise",), ALL)
    assert open_graph(bundle, "denoise", "auto", device="cpu").info.precision == "fp32"  # as before auto
    assert open_graph(bundle, "denoise", "int8", device="cpu").info.precision == "int8"
    assert lines(capsys) == []
    assert open_graph(bundle, "denoise", "fp16", device="auto").info.precision == "fp16"
    (line,) = lines(capsys)
    assert line.startswith("edgeae: device auto -> cpu fp16 (") and "1 candidates" in line


def test_cli_defaults_to_auto_and_device_cpu_is_as_before(make_bundle, tmp_path):
    bundle = make_bundle(("denoise",), ALL)
    image = tmp_path / "in.png"
    import cv2

    cv2.imwrite(str(image), np.full((24, 32, 3), 90, np.uint8))
    res = CliRunner().invoke(cli, ["denoise", str(bundle), str(image), "-o", str(tmp_path / "a.png")])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("edgeae: device auto -> cpu ") == 1
    res = CliRunner().invoke(cli, ["denoise", str(bundle), str(image), "-o", str(tmp_path / "b.png"), "--device",
                                   "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "device auto" not in res.stderr
    assert (cv2.imread(str(tmp_path / "a.png")) == cv2.imread(str(tmp_path / "b.png"))).all()
    helps = " ".join(CliRunner().invoke(cli, ["denoise", "--help"]).output.split())
    assert "[default: auto]" in helps and "edgeae doctor" in helps


def test_a_precision_the_gate_did_not_pass_is_not_a_candidate(make_bundle, rewrite_manifest):
    bundle = make_bundle(("denoise",), ALL)
    set_gate(rewrite_manifest, bundle, "denoise.int8.onnx", "forced")
    choice = autodevice.measure(bundle, available=[CPU])
    (row,) = [r for r in choice.rows if r.precision == "int8"]
    assert not row.tried and row.status == "skipped" and 'export gate: "forced"' in row.reason
    assert choice.precision != "int8"
    named = autodevice.measure(bundle, precision="int8", available=[CPU])  # named by the user: tried
    assert named.precision == "int8" and {r.precision for r in named.rows} == {"int8"}


def test_a_precision_the_bundle_lacks_is_exit_4_naming_those_present(make_bundle):
    with pytest.raises(Exception, match=r"no denoise graph at precision int8 \(present: fp32\)") as info:
        autodevice.measure(make_bundle(("denoise",)), precision="int8", available=[CPU])
    assert info.value.exit_code == 4


def test_an_unknown_provider_is_listed_not_tried(make_bundle):
    choice = autodevice.measure(make_bundle(("denoise",)), available=["FooExecutionProvider", CPU])
    (row,) = [r for r in choice.rows if r.device == "FooExecutionProvider"]
    assert not row.tried and row.reason == "edgeae has no device for this provider"
    assert choice.device == "cpu"


def test_an_unknown_device_name_is_a_one_line_usage_error(make_bundle):
    with pytest.raises(UsageError, match=r"unknown device 'foo' \(expected one of cpu, ") as info:
        open_graph(make_bundle(("denoise",)), "denoise", device="foo")
    assert "\n" not in str(info.value)


def test_providers_that_cannot_be_created_are_skipped_with_the_reason(make_bundle):
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
                 "CoreMLExecutionProvider", "XnnpackExecutionProvider", CPU]  # fmt: skip
    choice = autodevice.measure(make_bundle(("denoise",), ALL), available=available)
    tried = {(r.device, r.precision): r for r in choice.rows if r.device != "cpu"}
    expected = {(d, p) for d in ("cuda", "tensorrt", "openvino", "coreml", "xnnpack") for p in ALL}
    assert set(tried) == expected | {("openvino-bf16", "fp32")}  # BF16 is an inference precision: fp32 only
    for row in tried.values():
        assert row.status == "skipped" and row.ms is None, row
        assert row.reason.startswith("not created: ") and "is not available in this onnxruntime" in row.reason
    assert choice.device == "cpu"
    table = autodevice.format_table(choice.rows)
    assert "openvino-bf16  fp32" in table and "skipped: not created:" in table


def test_a_candidate_outside_the_tolerance_fails_the_check(make_bundle, make_model, monkeypatch):
    # fp16 deliberately perturbed (half the gain); with no margin and no floor it may not differ at all
    bundle = make_bundle(("denoise",), ("fp32", "fp16"),
                         models={("denoise", "fp16"): make_model("denoise", precision="fp16", gain=0.5)})  # fmt: skip
    monkeypatch.setattr(autodevice, "MARGIN", 0.0)
    monkeypatch.setattr(autodevice, "INT_FLOOR", 0.0)
    choice = autodevice.measure(bundle, available=[CPU])
    (row,) = [r for r in choice.rows if r.precision == "fp16"]
    assert row.status == "failed" and row.ms is None and row.diff > 30 and row.tol == 0
    assert row.reason.startswith("output check: denoised differs by ") and "tolerance 0" in row.reason
    assert (choice.device, choice.precision) == ("cpu", "fp32")


def test_the_gate_passed_deviation_sets_the_tolerance(make_bundle, make_model):
    bundle = make_bundle(("denoise",), ("fp32", "fp16"),
                         models={("denoise", "fp16"): make_model("denoise", precision="fp16", gain=0.5)})  # fmt: skip
    choice = autodevice.measure(bundle, available=[CPU])
    (row,) = [r for r in choice.rows if r.precision == "fp16"]
    assert row.status in ("passed", "chosen") and row.tol == pytest.approx(autodevice.MARGIN * row.diff)


def test_a_candidate_with_nan_outputs_is_skipped(make_bundle, make_model):
    bundle = make_bundle(
        ("anomaly",),
        ("fp32", "fp16"),
        models={("anomaly", "fp16"): make_model("anomaly", precision="fp16", gain=float("nan"))},
    )
    choice = autodevice.measure(bundle, available=[CPU])
    (row,) = [r for r in choice.rows if r.precision == "fp16"]
    assert row.status == "skipped" and "NaN or Inf" in row.reason
    (ref,) = [r for r in choice.rows if r.precision == "fp32"]
    assert ref.status == "chosen" and 0 < ref.tol <= autodevice.FLOAT_FLOOR * 255  # floats: the floor


def test_a_corrupt_cache_is_said_and_measured_again(make_bundle, capsys):
    bundle = make_bundle(("denoise",))
    path = autodevice.cache_path(bundle)
    path.parent.mkdir(parents=True)
    for garbage in (b"{not json", b'{"format": "edgeae-device-cache", "version": 1, "bundle_sha256": "x", '
                    b'"machine": {}, "choices": {"k": {"device": "quantum"}}}'):  # fmt: skip
        path.write_bytes(garbage)
        open_graph(bundle, device="auto")
        warn, choice = lines(capsys)
        assert warn.startswith(f"edgeae: device auto: ignoring the corrupt cache {path} (")
        assert choice.startswith("edgeae: device auto -> cpu fp32 (0") and "cached" not in choice
        json.loads(path.read_text())  # rewritten whole


@pytest.mark.parametrize("how", ["under-a-file", "read-only"])
def test_an_unwritable_cache_is_said_and_the_run_goes_on(make_bundle, capsys, tmp_path, monkeypatch, how):
    if how == "under-a-file":
        (tmp_path / "file").write_text("x")
        monkeypatch.setenv("EDGEAE_CACHE_DIR", str(tmp_path / "file" / "cache"))
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        (tmp_path / "ro").mkdir(mode=0o500)
        monkeypatch.setenv("EDGEAE_CACHE_DIR", str(tmp_path / "ro"))
    bundle = make_bundle(("denoise",))
    for _ in range(2):
        assert open_graph(bundle, device="auto").device == "cpu"
        warn, choice = lines(capsys)
        assert warn.startswith("edgeae: device auto: cannot write the cache ") and "measured again next" in warn
        assert "cached" not in choice


def test_a_changed_bundle_is_measured_again(make_bundle, make_model, refresh_manifest, capsys):
    bundle = make_bundle(("denoise",))
    open_graph(bundle, device="auto")
    capsys.readouterr()
    (bundle / "denoise.fp32.onnx").write_bytes(make_model("denoise", gain=0.9).SerializeToString())
    refresh_manifest(bundle)
    open_graph(bundle, device="auto")
    stale, choice = lines(capsys)
    assert stale == (f"edgeae: device auto: the cached choice in {autodevice.cache_path(bundle)} is stale "
                     "(the bundle changed); measuring again")  # fmt: skip
    assert "cached" not in choice
    open_graph(bundle, device="auto")
    assert "(cached: " in lines(capsys)[0]


def test_a_changed_onnxruntime_or_provider_list_is_measured_again(make_bundle, capsys):
    bundle = make_bundle(("denoise",))
    open_graph(bundle, device="auto")
    path = autodevice.cache_path(bundle)
    data = json.loads(path.read_text())
    data["machine"]["onnxruntime"] = "1.0.0"
    path.write_text(json.dumps(data))
    capsys.readouterr()
    open_graph(bundle, device="auto")
    stale, _ = lines(capsys)
    assert "is stale (onnxruntime '1.0.0' -> " in stale and stale.endswith("; measuring again")


def test_a_cached_choice_that_no_longer_opens_is_measured_again(make_bundle, capsys):
    bundle = make_bundle(("denoise",))
    open_graph(bundle, device="auto")
    path = autodevice.cache_path(bundle)
    data = json.loads(path.read_text())
    for entry in data["choices"].values():
        entry["device"] = "cuda"
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert open_graph(bundle, device="auto").device == "cpu"
    cached, failed, fresh = lines(capsys)
    assert cached.startswith("edgeae: device auto -> cuda fp32 (cached: ")
    assert failed.startswith("edgeae: device auto: the cached cuda fp32 failed (") and "measuring again" in failed
    assert fresh.startswith("edgeae: device auto -> cpu fp32 (")


def test_compress_bundles_choose_per_graph_and_check_the_decoder_on_a_real_latent(make_bundle, capsys):
    bundle = make_bundle(("encoder", "decoder"), ("fp32", "int8"), task="compress")
    for graph in ("encoder", "decoder"):
        assert open_graph(bundle, graph, device="auto").info.graph == graph
    enc, dec = lines(capsys)
    assert " for encoder (" in enc and " for decoder (" in dec
    latent, size = autodevice._encoder_latent(load_bundle(bundle), 1)
    assert size == (256, 256) and latent["latent"].shape == (1, 3, 256, 256)  # the tiny codec's stride is 1


def test_a_single_onnx_file_is_measured_against_itself(make_model, write_model, capsys):
    path = write_model(make_model("denoise", precision="int8"))
    assert open_graph(path, device="auto").info.precision == "int8"
    (line,) = lines(capsys)
    assert line.startswith("edgeae: device auto -> cpu int8 (") and f"edgeae doctor {path})" in line


def test_provider_options_need_an_explicit_device(make_bundle):
    with pytest.raises(UsageError, match="provider options need an explicit device"):
        open_graph(make_bundle(("denoise",)), device="auto", provider_options={"a": "b"})


def test_doctor_lists_providers_and_the_measured_table(make_bundle, cache):
    res = CliRunner().invoke(cli, ["doctor"])
    assert res.exit_code == 0 and "CPUExecutionProvider: --device cpu" in res.output
    bundle = make_bundle(("denoise",), ALL)
    res = CliRunner().invoke(cli, ["doctor", str(bundle), "--threads", "1"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert re.search(r"^device +precision +ms/frame +max\|diff\| +tolerance +result$", out, re.M)
    assert len(re.findall(r"^cpu +(?:fp32|fp16|int8) +\d+\.\d\d +0 +1 +(?:chosen|passed)$", out, re.M)) == 3
    assert "(before: none)" in out
    assert f"cache {autodevice.cache_path(bundle)}" in out
    res = CliRunner().invoke(cli, ["doctor", str(bundle), "--threads", "1"])
    assert "(before: cpu " in res.stdout  # the cached choice of the first doctor


def test_doctor_of_a_missing_model_is_exit_4_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["doctor", str(tmp_path / "nope")])
    assert res.exit_code == 4 and res.stderr.count("\n") == 1 and "nope" in res.stderr


def test_files_other_than_graphs_do_not_make_the_choice_stale(make_bundle, refresh_manifest, capsys):
    bundle = make_bundle(("denoise",), extra_files={"anomaly_notes.bin": b"before"})  # as calibrate's statistics
    open_graph(bundle, device="auto")
    (bundle / "anomaly_notes.bin").write_bytes(b"after")
    refresh_manifest(bundle)
    capsys.readouterr()
    open_graph(bundle, device="auto")
    (line,) = lines(capsys)
    assert "(cached: " in line


def test_a_graph_with_a_fixed_frame_size_is_checked_at_that_size(make_bundle, make_model, capsys):
    model = make_model("denoise")
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        dims[1].dim_value, dims[2].dim_value = 24, 32
    bundle = make_bundle(models={("denoise", "fp32"): model})
    assert open_graph(bundle, device="auto").device == "cpu"
    (line,) = lines(capsys)
    assert "ms/frame at 32x24; 1 candidates" in line


def test_a_reference_that_does_not_run_is_said_not_measured_and_not_cached(make_bundle, make_model, capsys):
    helper = pytest.importorskip("onnx.helper")
    model = make_model("denoise")
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.append(helper.make_node("ReduceMax", ["frame"], ["denoised"], axes=[1, 2], keepdims=1))
    bundle = make_bundle(models={("denoise", "fp32"): model})
    assert open_graph(bundle, device="auto").device == "cpu"  # what --device cpu opens; its frames then fail
    (line,) = lines(capsys)
    assert line.startswith("edgeae: device auto -> cpu fp32 (not measured: the reference (fp32, CPU provider, "
                           "256x256 check frame) run failed: ")  # fmt: skip
    assert line.endswith("expected [1,256,256,3], got [1,1,1,3])")
    assert not autodevice.cache_path(bundle).exists()
