"""Model loading: every RELIABILITY.md model case (1-7) is refused with exit 4 before onnxruntime parses a byte."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import model as model_mod
from edge_runtime import onnx_proto
from edge_runtime.errors import MODEL_REJECTED, USAGE, ModelRejectedError, UsageError
from edge_runtime.model import (
    SCHEMA_VERSION,
    Bundle,
    check_no_external_data,
    check_opsets,
    check_schema,
    load_bundle,
    open_graph,
    read_metadata,
    read_model_bytes,
    read_opsets,
)

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402  (after the importorskip above)


def rejected(match: str):
    """pytest.raises for ModelRejectedError whose message matches; the exit code is checked by the caller."""
    return pytest.raises(ModelRejectedError, match=match)


# --------------------------------------------------------------------------------------------------------------
# Happy path


def test_open_bundle_runs_and_describes_itself(make_bundle):
    root = make_bundle(["denoise"], ["fp32", "int8"])
    graph = open_graph(root, "denoise", "int8")
    assert graph.info.graph == "denoise" and graph.info.precision == "int8"
    assert graph.info.metadata["edgeae.schema_version"] == str(SCHEMA_VERSION)
    assert [(s.name, s.dtype, s.shape) for s in graph.info.inputs] == [
        ("frame", np.dtype(np.uint8), ("N", "H", "W", 3))
    ]
    assert graph.info.sha256 == hashlib.sha256((root / "denoise.int8.onnx").read_bytes()).hexdigest()
    assert graph.providers == ["CPUExecutionProvider"]
    frame = np.random.default_rng(0).integers(0, 256, (1, 16, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(graph.run({"frame": frame})["denoised"], frame)


def test_bundle_api_lists_precisions_and_paths(make_bundle):
    root = make_bundle(["encoder", "decoder"], ["int8", "fp32"], extra_files={"entropy.json": b"{}"})
    bundle = load_bundle(root / "manifest.json")  # the manifest path works as well as the directory
    assert isinstance(bundle, Bundle) and bundle.root == root and bundle.task == "compress"
    assert bundle.precisions("encoder") == ["fp32", "int8"]
    assert bundle.precisions("denoise") == []
    assert bundle.graphs() == ["encoder", "decoder"]
    assert bundle.graph_path("decoder", "int8") == root / "decoder.int8.onnx"
    assert bundle.file_path("entropy.json") == root / "entropy.json"
    assert bundle.read_verified("entropy.json") == b"{}"
    assert bundle.contract["graph"] == "encoder"
    with rejected(r"no encoder graph at precision fp16 \(present: fp32, int8\)") as err:
        bundle.graph_path("encoder", "fp16")
    assert err.value.exit_code == MODEL_REJECTED
    with rejected(r"no anomaly graph in this bundle \(graphs: encoder, decoder\)"):
        bundle.graph_path("anomaly")
    with rejected("not listed"):
        bundle.file_path("manifest.json")


def test_graph_must_be_named_when_a_bundle_has_several(make_bundle):
    root = make_bundle(["encoder", "decoder"])
    with pytest.raises(UsageError, match="encoder, decoder") as err:
        open_graph(root)
    assert err.value.exit_code == USAGE
    assert open_graph(root, "decoder").info.graph == "decoder"


def test_single_onnx_file_opens_without_manifest(make_model, write_model):
    path = write_model(make_model("anomaly", precision="fp16"))
    graph = open_graph(path)  # graph and precision come from the file's metadata
    assert graph.info.graph == "anomaly" and graph.info.precision == "fp16"


def test_session_is_made_from_the_checked_bytes(make_bundle, monkeypatch):
    # The file must not be read a second time by onnxruntime: what was hashed is what runs.
    root = make_bundle()
    seen = []
    real = ort.InferenceSession

    def spy(path_or_bytes, *args, **kwargs):
        seen.append(path_or_bytes)
        return real(path_or_bytes, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    open_graph(root)
    assert seen == [(root / "denoise.fp32.onnx").read_bytes()]


# --------------------------------------------------------------------------------------------------------------
# Case 1: missing, unreadable, a directory


def test_missing_path(tmp_path):
    for path in (tmp_path / "nope", tmp_path / "nope.onnx", tmp_path / "nope" / "manifest.json"):
        with rejected("does not exist") as err:
            open_graph(path)
        assert err.value.exit_code == MODEL_REJECTED
        assert str(path) in str(err.value)


def test_directory_without_manifest(tmp_path):
    (tmp_path / "denoise.fp32.onnx").write_bytes(b"x")
    with rejected(r"no manifest\.json \(not an edgeae bundle\)"):
        open_graph(tmp_path)
    with rejected(r"no manifest\.json"):
        load_bundle(tmp_path)


def test_manifest_that_is_a_directory(tmp_path):
    (tmp_path / "manifest.json").mkdir()
    with rejected("is a directory"):
        load_bundle(tmp_path)


def test_unreadable_model_file(make_model, write_model, monkeypatch):
    # Simulated with os.open: chmod 000 does not stop root, and these tests may run as root.
    path = write_model(make_model())
    real_open = os.open

    def deny(p, *args, **kwargs):
        if Path(p) == path:
            raise PermissionError(13, "Permission denied")
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with rejected("cannot read model file \\(Permission denied\\)"):
        open_graph(path)


def test_load_bundle_refuses_a_plain_file(make_model, write_model):
    with rejected("not a bundle directory"):
        load_bundle(write_model(make_model()))


# --------------------------------------------------------------------------------------------------------------
# Case 2: empty, truncated, not protobuf


def test_empty_file(write_model):
    with rejected("is empty") as err:
        open_graph(write_model(b""))
    assert err.value.exit_code == MODEL_REJECTED


def test_every_truncation_is_rejected_or_loses_only_optional_metadata(make_model, write_model):
    # Without a manifest, a cut exactly between two trailing metadata entries leaves a complete, valid model
    # (only a hash can tell); every other cut must be refused. Bundles catch all cuts (next test).
    data = make_model().SerializeToString()
    full = read_metadata(data)
    path = write_model(b"")
    accepted = []
    for size in range(1, len(data)):
        path.write_bytes(data[:size])
        try:
            open_graph(path)
        except ModelRejectedError:
            continue
        lost = set(full) - set(read_metadata(data[:size]))
        assert lost and not lost & set(model_mod.REQUIRED_METADATA), (size, lost)
        accepted.append(size)
    assert len(accepted) <= 3  # run_id, quality, model_config come after the required keys here


def test_truncated_file_in_a_bundle_is_always_rejected(make_bundle):
    root = make_bundle()
    model = root / "denoise.fp32.onnx"
    data = model.read_bytes()
    for size in range(0, len(data), 7):
        model.write_bytes(data[:size])
        with rejected("size is .* the manifest says"):
            open_graph(root)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_not_a_model(write_model, seed):
    data = np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with rejected(r"not an ONNX model \(truncated or corrupt protobuf"):
        open_graph(write_model(data))


def test_text_file_is_not_a_model(write_model):
    with rejected("not an ONNX model"):
        open_graph(write_model(b"hello, this is not protobuf\n" * 10))


def test_well_formed_protobuf_that_is_not_a_model(write_model):
    # A valid wire message (field 2 = a string) with no graph: parses, but is no ModelProto.
    with rejected(r"not an ONNX model .*no graph"):
        open_graph(write_model(b"\x12\x05hello"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=512))
def test_walker_raises_only_model_rejected_on_arbitrary_bytes(data):
    for check in (lambda: check_no_external_data(data, "x"), lambda: read_metadata(data), lambda: read_opsets(data)):
        try:
            check()
        except ModelRejectedError:
            pass


@settings(max_examples=200, deadline=None)
@given(flip=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_walker_survives_any_single_bit_flip(tiny_model_bytes, flip, bit):
    data = bytearray(tiny_model_bytes)
    data[flip % len(data)] ^= 1 << bit
    try:
        check_no_external_data(bytes(data), "x")
        read_metadata(bytes(data))
    except ModelRejectedError:
        pass


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_deeply_nested_subgraphs_do_not_blow_the_stack():
    # graph > node > attribute > graph ... 5000 levels, written by hand (protobuf itself refuses to build it):
    # the walker refuses the depth instead of recursing until Python gives up.
    graph = b""
    for _ in range(5000):
        graph = _field(1, _field(5, _field(6, graph)))  # GraphProto.node > NodeProto.attribute > AttributeProto.g
    data = _varint(1 << 3) + _varint(10) + _field(7, graph)  # ir_version 10, graph
    with rejected("nested too deeply"):
        check_no_external_data(data, "deep.onnx")


# --------------------------------------------------------------------------------------------------------------
# Case 3: size cap, before reading


def test_size_cap_is_checked_before_reading(make_model, write_model, monkeypatch):
    path = write_model(make_model())
    monkeypatch.setattr(model_mod, "MAX_MODEL_BYTES", 64)
    real_open = os.open

    def no_read(p, *args, **kwargs):
        assert Path(p) != path, "the model file was opened although it is over the cap"
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_read)
    with rejected(r"bytes, over the 64-byte cap") as err:
        open_graph(path)
    assert err.value.exit_code == MODEL_REJECTED


def test_size_cap_applies_to_bundle_files(make_bundle, monkeypatch):
    root = make_bundle()
    monkeypatch.setattr(model_mod, "MAX_MODEL_BYTES", 64)
    with rejected("over the 64-byte cap"):
        load_bundle(root)


def test_read_model_bytes_refuses_symlinks(make_model, write_model, tmp_path):
    target = write_model(make_model())
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    with rejected("is a symlink"):
        read_model_bytes(link, None)
    assert read_model_bytes(target, None) == target.read_bytes()


def test_read_model_bytes_refuses_a_fifo_without_opening_it(tmp_path):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    with rejected("not a regular file"):  # opening it would block forever
        read_model_bytes(fifo, None)


# --------------------------------------------------------------------------------------------------------------
# Case 4: SHA-256 and manifest checks


def test_sha_mismatch_names_file_and_both_hashes(make_bundle):
    root = make_bundle()
    path = root / "denoise.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # same size, different content
    path.write_bytes(bytes(data))
    expected = json.loads((root / "manifest.json").read_text())["files"]["denoise.fp32.onnx"]["sha256"]
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with rejected("SHA-256 mismatch") as err:
        open_graph(root)
    message = str(err.value)
    assert "denoise.fp32.onnx" in message and expected[:12] in message and actual[:12] in message
    assert err.value.exit_code == MODEL_REJECTED


@pytest.mark.parametrize("name", ["denoise.fp32.onnx", "entropy.json"])
def test_load_bundle_hashes_every_listed_file(make_bundle, name):
    root = make_bundle(extra_files={"entropy.json": b'{"cdf": [0, 1]}'})
    data = bytearray((root / name).read_bytes())
    data[0] ^= 0x20
    (root / name).write_bytes(bytes(data))
    with rejected(f"{name}: SHA-256 mismatch"):
        load_bundle(root)


def test_read_model_bytes_checks_the_hash_it_is_given(make_model, write_model):
    path = write_model(make_model())
    with rejected("SHA-256 mismatch"):
        read_model_bytes(path, "0" * 64)
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_model_bytes(path, good.upper()) == path.read_bytes()


def test_size_mismatch(make_bundle, rewrite_manifest):
    root = make_bundle()
    rewrite_manifest(root, lambda m: m["files"]["denoise.fp32.onnx"].update(bytes=1))
    with rejected("the manifest says 1"):
        load_bundle(root)


def test_listed_file_missing(make_bundle):
    root = make_bundle()
    (root / "denoise.fp32.onnx").unlink()
    with rejected("does not exist"):
        load_bundle(root)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"format": "edgeae-bundle", "format": "other"}', "duplicate key"),
        ("\xff\xfe", "not valid JSON"),
    ],
)
def test_manifest_not_valid(make_bundle, text, match):
    root = make_bundle()
    (root / "manifest.json").write_bytes(text.encode("latin-1"))
    with rejected(match):
        load_bundle(root)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format": "something-else"}, "format is 'something-else'"),
        ({"schema_version": 2}, r"unknown schema version 2 \(this edgeae knows 1\)"),
        ({"schema_version": "1"}, "unknown schema version 1"),  # a string is not the integer 1
        ({"schema_version": True}, "unknown schema version True"),
        ({"task": "segment"}, "unknown task 'segment'"),
        ({"files": {}}, "lists no files"),
        ({"calibration": {"threshold": "high"}}, "not a finite number"),
        ({"contract": []}, "must be JSON objects"),
    ],
)
def test_manifest_fields(make_bundle, rewrite_manifest, changes, match):
    root = make_bundle()
    rewrite_manifest(root, **changes)
    with rejected(match) as err:
        load_bundle(root)
    assert err.value.exit_code == MODEL_REJECTED


def test_manifest_nan_is_refused(make_bundle):
    root = make_bundle()
    text = (root / "manifest.json").read_text().replace('"calibration": {}', '"calibration": {"threshold": NaN}')
    (root / "manifest.json").write_text(text)
    with rejected("NaN is not valid JSON"):
        load_bundle(root)


@pytest.mark.parametrize(
    ("entry_changes", "match"),
    [
        ({"sha256": "abc"}, "no valid sha256"),
        ({"bytes": -1}, "no valid byte count"),
        ({"graph": "segmenter"}, "unknown graph 'segmenter'"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"graph": None, "precision": None}, "does not say which graph"),
    ],
)
def test_manifest_entries(make_bundle, rewrite_manifest, entry_changes, match):
    root = make_bundle()

    def edit(m):
        entry = m["files"]["denoise.fp32.onnx"]
        for key, value in entry_changes.items():
            if value is None:
                entry.pop(key)
            else:
                entry[key] = value

    rewrite_manifest(root, edit)
    with rejected(match):
        load_bundle(root)


def test_two_files_for_one_graph_and_precision(make_bundle, rewrite_manifest):
    root = make_bundle(["denoise"], ["fp32", "int8"])
    rewrite_manifest(root, lambda m: m["files"]["denoise.int8.onnx"].update(precision="fp32"))
    with rejected("both the denoise graph at fp32"):
        load_bundle(root)


@pytest.mark.parametrize(
    "name", ["../outside.onnx", "/etc/hostname", "sub/denoise.fp32.onnx", "..", ".hidden.onnx", "a\\b"]
)
def test_file_names_must_be_plain(make_bundle, rewrite_manifest, name):
    root = make_bundle()

    def edit(m):
        m["files"][name] = m["files"].pop("denoise.fp32.onnx")

    rewrite_manifest(root, edit)
    with rejected("not a plain file name"):
        load_bundle(root)


def test_symlinked_bundle_file_is_refused_even_with_the_right_hash(make_bundle, make_model, tmp_path):
    root = make_bundle()
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((root / "denoise.fp32.onnx").read_bytes())
    (root / "denoise.fp32.onnx").unlink()
    (root / "denoise.fp32.onnx").symlink_to(outside)
    with rejected("is a symlink"):
        load_bundle(root)


def test_symlinked_bundle_directory_is_fine(make_bundle, tmp_path):
    # `models/current -> models/v3` is how devices switch models; only files inside must be plain.
    root = make_bundle()
    link = tmp_path / "current"
    link.symlink_to(root, target_is_directory=True)
    assert open_graph(link).info.graph == "denoise"


# --------------------------------------------------------------------------------------------------------------
# Case 5: external data, never opened


def _external_tensor(name: str, location: str) -> TensorProto:
    tensor = numpy_helper.from_array(np.ones(4, dtype=np.float32), name)
    tensor.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = TensorProto.EXTERNAL
    return tensor


def _add_external(model, place: str, location: str):
    tensor = _external_tensor("ext", location)
    if place == "initializer":
        model.graph.initializer.append(tensor)
    elif place == "location-flag-only":
        tensor.ClearField("external_data")
        model.graph.initializer.append(tensor)
    elif place == "entries-only":
        tensor.data_location = TensorProto.DEFAULT
        model.graph.initializer.append(tensor)
    elif place == "constant-attribute":
        model.graph.node.append(helper.make_node("Constant", [], ["c"], value=tensor))
    elif place == "tensors-attribute":
        attr = helper.make_attribute("tensors", [tensor])
        node = helper.make_node("Identity", ["frame"], ["unused"])
        node.attribute.append(attr)
        model.graph.node.append(node)
    elif place == "subgraph":
        then = helper.make_graph(
            [], "then", [], [helper.make_tensor_value_info("ext", TensorProto.FLOAT, [4])], [tensor]
        )
        model.graph.node.append(helper.make_node("If", ["cond"], ["o"], then_branch=then, else_branch=then))
    elif place == "sparse-initializer":
        indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "idx")
        model.graph.sparse_initializer.append(helper.make_sparse_tensor(tensor, indices, [8]))
    elif place == "function":
        func = helper.make_function(
            "local",
            "f",
            [],
            ["c"],
            [helper.make_node("Constant", [], ["c"], value=tensor)],
            [helper.make_opsetid("", 17)],
        )
        model.functions.append(func)
    elif place == "training-info":
        info = model.training_info.add()
        info.initialization.CopyFrom(helper.make_graph([], "init", [], [], [tensor]))
    else:
        raise ValueError(place)
    return model


PLACES = [
    "initializer",
    "location-flag-only",
    "entries-only",
    "constant-attribute",
    "tensors-attribute",
    "subgraph",
    "sparse-initializer",
    "function",
    "training-info",
]


@pytest.fixture
def open_spy(monkeypatch):
    """Records every path opened through Python's open() and os.open()."""
    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    return opened


@pytest.mark.parametrize("place", PLACES)
def test_external_data_anywhere_is_refused(make_model, make_bundle, tmp_path, open_spy, place):
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x00" * 16)
    model = _add_external(make_model(), place, "../secret")
    root = make_bundle(models={("denoise", "fp32"): model})  # the manifest's hash matches: only the data is bad
    with rejected("refers to external data for tensor.*ext") as err:
        open_graph(root)
    assert err.value.exit_code == MODEL_REJECTED
    assert not [p for p in open_spy if "secret" in p]


@pytest.mark.parametrize("location", ["/etc/hostname", "../../../../etc/passwd", "weights.bin", "C:\\x.bin"])
def test_external_data_any_location(make_model, write_model, location):
    path = write_model(_add_external(make_model(), "initializer", location))
    with rejected("external data"):
        open_graph(path)


def test_external_target_that_does_not_exist_is_still_about_external_data(make_model):
    data = _add_external(make_model(), "initializer", "../no-such-file").SerializeToString()
    with rejected("refers to external data for tensor\\(s\\) ext; edgeae loads self-contained models only"):
        check_no_external_data(data, "m.onnx")


def test_external_data_check_passes_self_contained_models(make_model):
    check_no_external_data(make_model("anomaly").SerializeToString(), "m.onnx")


# --------------------------------------------------------------------------------------------------------------
# Case 7: schema version, custom op domain, opset; the walker itself


def test_metadata_walker_matches_onnx(make_model):
    model = make_model("anomaly")
    data = model.SerializeToString()
    assert read_metadata(data) == {p.key: p.value for p in model.metadata_props}
    assert read_opsets(data) == {"": 17}


@settings(max_examples=50, deadline=None)
@given(
    meta=st.dictionaries(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=300),
        max_size=8,
    )
)
def test_metadata_walker_round_trips(tiny_model_bytes, meta):
    model = onnx.ModelProto.FromString(tiny_model_bytes)
    del model.metadata_props[:]
    helper.set_model_props(model, meta)
    assert read_metadata(model.SerializeToString()) == meta


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"edgeae.schema_version": "2"}, r"unknown schema version 2 \(this edgeae knows 1\)"),
        ({"edgeae.schema_version": None}, "not an edgeae model"),
        ({"edgeae.max_side": None}, "metadata lacks edgeae.max_side"),
        ({"edgeae.input_multiple": "0"}, r"edgeae.input_multiple='0' is out of range \(allowed 1..256\)"),
        ({"edgeae.max_side": "big"}, r"edgeae.max_side='big' is not an integer \(allowed"),
        ({"edgeae.channels": "2"}, r"edgeae.channels='2' is not allowed \(allowed 1 or 3\)"),
        ({"edgeae.precision": "int4"}, r"edgeae.precision='int4' is not allowed \(allowed fp32, fp16, int8\)"),
    ],
)
def test_schema_and_metadata(make_model, write_model, changes, match):
    with rejected(match) as err:
        open_graph(write_model(make_model(metadata=changes)))
    assert err.value.exit_code == MODEL_REJECTED


# Case 6 / RELIABILITY 32: every number the runtime computes with is range-checked when the graph is opened,
# before anything is sized from it (input_multiple 60000 asked onnxruntime for 10.8 GB on a 1-pixel frame).
@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"edgeae.input_multiple": "60000"}, r"edgeae.input_multiple='60000' is out of range \(allowed 1..256\)"),
        ({"edgeae.input_multiple": "1_0"}, r"edgeae.input_multiple='1_0' is not an integer"),
        ({"edgeae.input_multiple": " 8"}, r"edgeae.input_multiple=' 8' is not an integer"),
        ({"edgeae.max_side": "100000"}, r"edgeae.max_side='100000' is out of range \(allowed 1..16384\)"),
        ({"edgeae.max_side": "4", "edgeae.input_multiple": "8"}, "edgeae.input_multiple=8 is over edgeae.max_side=4"),
        ({"edgeae.latent.stride": "4096"}, r"edgeae.latent.stride='4096' is out of range \(allowed 1..256\)"),
        ({"edgeae.latent.channels": "0"}, r"edgeae.latent.channels='0' is out of range \(allowed 1..1024\)"),
        ({"edgeae.quality": "300"}, r"edgeae.quality='300' is out of range \(allowed 0..255\)"),
        ({"edgeae.anomaly.threshold": "nan"}, r"edgeae.anomaly.threshold='nan' is not a finite number"),
        ({"edgeae.anomaly.threshold": "1e400"}, r"edgeae.anomaly.threshold='1e400' is not a finite number"),
        ({"edgeae.anomaly.threshold": "-1"}, r"edgeae.anomaly.threshold='-1' is out of range \(allowed 0..1e\+06\)"),
        ({"edgeae.anomaly.norm_std": "1e-300"}, r"norm_std='1e-300' is out of range \(allowed 1e-06..1e\+06\)"),
        ({"edgeae.anomaly.norm_mean": "-1e9"}, r"norm_mean='-1e9' is out of range \(allowed -1e\+06..1e\+06\)"),
    ],
)
def test_metadata_numbers_out_of_range_are_refused(make_model, write_model, changes, match):
    with rejected(match) as err:
        open_graph(write_model(make_model(metadata=changes)))
    assert err.value.exit_code == MODEL_REJECTED
    assert "\n" not in str(err.value)


def test_metadata_in_range_is_accepted(make_model, write_model):
    meta = {"edgeae.input_multiple": "256", "edgeae.max_side": "16384", "edgeae.anomaly.norm_std": "1e-06"}
    graph = open_graph(write_model(make_model("anomaly", input_multiple=256, metadata=meta)))
    assert (graph.info.input_multiple, graph.info.max_side) == (256, 16384)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["contract"].update(input_multiple="60000"), r"contract input_multiple='60000' is out of range"),
        (lambda m: m["contract"].update(max_side=10**9), r"contract max_side=1000000000 is out of range"),
        (lambda m: m["calibration"].update(norm_std=0.0), r"calibration norm_std=0.0 is out of range"),
        (lambda m: m["calibration"].update(threshold=1e300), r"calibration threshold=1e\+300 is out of range"),
    ],
)
def test_manifest_numbers_out_of_range_are_refused(make_bundle, rewrite_manifest, edit, match):
    root = make_bundle()
    rewrite_manifest(root, edit=edit)
    with rejected(match) as err:
        load_bundle(root)
    assert err.value.exit_code == MODEL_REJECTED


def test_check_schema_directly():
    with rejected("not an edgeae model"):
        check_schema({}, "m")
    with rejected("unknown schema version 1.0"):
        check_schema({"edgeae.schema_version": "1.0"}, "m")


@pytest.mark.parametrize("domain", ["com.example.custom", "ai.onnx.contrib", "org.pytorch.aten"])
def test_custom_op_domain_is_refused(make_model, write_model, domain):
    with rejected(f"custom operator domain '{domain}'"):
        open_graph(write_model(make_model(extra_opsets={domain: 1})))


def test_node_with_a_custom_domain_is_refused(make_model):
    model = make_model()
    model.graph.node.append(helper.make_node("MyOp", ["frame"], ["x"], domain="com.example"))
    data = model.SerializeToString()
    found = onnx_proto.scan(data, "m")
    with rejected("custom operator domain 'com.example'"):
        check_opsets(found.opsets, "m", found.node_domains)


def test_microsoft_and_ml_domains_are_allowed():
    check_opsets({"": 17, "com.microsoft": 1, "ai.onnx.ml": 3}, "m")
    check_opsets({"ai.onnx": 21}, "m")


@pytest.mark.parametrize(("opset", "ok"), [(13, False), (16, False), (17, True), (21, True), (23, True), (24, False)])
def test_opset_range(make_model, write_model, opset, ok):
    path = write_model(make_model(opset=opset))
    if ok:
        assert open_graph(path).info.graph == "denoise"
    else:
        with rejected(f"unsupported ai.onnx opset {opset} \\(this edgeae supports 17 to 23\\)"):
            open_graph(path)


def test_no_default_opset_is_refused():
    with rejected("imports no ai.onnx opset"):
        check_opsets({"com.microsoft": 1}, "m")


# --------------------------------------------------------------------------------------------------------------
# Case 6 at load time: names, element types, ranks; metadata vs manifest


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"input_name": "image"}, r"expected inputs \[frame\], got \[image\]"),
        ({"input_dtype": "float32"}, r"input frame: expected uint8 \[\?,\?,\?,\?\], got float32 \[N,H,W,3\]"),
        ({"channels": 1, "metadata": {"edgeae.channels": "3"}}, "frame has 1 channels but edgeae.channels is 3"),
    ],
)
def test_io_contract_is_checked_after_session_creation(make_model, write_model, kw, match):
    with rejected(match) as err:
        open_graph(write_model(make_model("denoise", **kw)))
    assert err.value.exit_code == MODEL_REJECTED


def test_wrong_output_is_refused(make_model, write_model):
    model = make_model("denoise")
    model.graph.output[0].name = "cleaned"
    model.graph.node[-1].output[0] = "cleaned"
    with rejected(r"expected outputs \[denoised\], got \[cleaned\]"):
        open_graph(write_model(model))


def test_graph_contract_of_another_graph_is_refused(make_model, make_bundle):
    # The manifest calls it a denoise graph, the file is an encoder.
    encoder = make_model("encoder", metadata={"edgeae.graph": "denoise", "edgeae.task": "denoise"})
    root = make_bundle(models={("denoise", "fp32"): encoder})
    with rejected(r"expected outputs \[denoised\], got \[latent\]"):
        open_graph(root)


def test_metadata_must_agree_with_the_manifest(make_model, make_bundle):
    root = make_bundle(models={("denoise", "fp32"): make_model("denoise", precision="int8")})
    with rejected("metadata edgeae.precision is 'int8', expected 'fp32'"):
        open_graph(root)


def test_onnxruntime_refusal_is_model_rejected(make_model, write_model):
    model = make_model()
    model.graph.node[1].op_type = "NoSuchOperator"
    with rejected("onnxruntime refused the model"):
        open_graph(write_model(model))


def test_unknown_precision_is_a_usage_error(make_bundle):
    with pytest.raises(UsageError, match="unknown precision"):
        open_graph(make_bundle(), precision="fp64")


def test_expected_override(make_model, write_model):
    # Callers with a graph outside the table can pass their own contract.
    path = write_model(make_model("denoise", input_name="image", metadata={"edgeae.graph": "custom"}))
    expected = {"inputs": {"image": ("uint8", 4)}, "outputs": {"denoised": ("uint8", 4)}}
    graph = open_graph(path, expected=expected)
    assert graph.info.graph == "custom"
