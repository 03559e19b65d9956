"""edge_runtime.contract: one home for the bundle contract; the writer (export/) and the reader agree on every value.

Each agreement test names one value both sides use and fails if either side keeps a copy of its own that drifts
(issue 14: the threshold floor was 3.0 in export and 4.0 in the runtime, MAX_OPSET 21 in export and 23 here).
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest

from edge_runtime import bitstream, contract, model
from edge_runtime.contract import METADATA_RANGES, Range
from edge_runtime.errors import ModelRejectedError

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------------------
# The module itself


def test_contract_is_a_leaf():
    """Standard library only and nothing from edge_runtime: export/ and the runtime can both import it."""
    tree = ast.parse((ROOT / "edge_runtime" / "contract.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "contract.py imports nothing relative"
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "math", "re", "dataclasses", "typing"}


@pytest.mark.parametrize(
    ("allowed", "value", "parsed"),
    [
        (Range(int, 1, 256), "8", 8),
        (Range(int, 1, 256), 256, 256),
        (Range(int, 1, 3, choices=(1, 3)), "3", 3),
        (Range(float, 0.0, 1e6), "3.0", 3.0),
        (Range(float, 0.0, 1e6), "1e-06", 1e-06),
        (Range(float, -1e6, 1e6), "-0.25", -0.25),
        (Range(float, 0.0, 1e6), 4, 4.0),
    ],
)
def test_range_parses_what_the_writer_writes(allowed, value, parsed):
    assert allowed.parse(value) == parsed


@pytest.mark.parametrize(
    ("allowed", "value", "reason"),
    [
        (Range(int, 1, 256), "60000", "is out of range (allowed 1..256)"),
        (Range(int, 1, 256), "0", "is out of range (allowed 1..256)"),
        (Range(int, 1, 256), "8.0", "is not an integer (allowed 1..256)"),
        (Range(int, 1, 256), "1_0", "is not an integer"),
        (Range(int, 1, 256), "0x10", "is not an integer"),
        (Range(int, 1, 256), "\u0663", "is not an integer"),  # an Arabic-Indic 3: int() would take it
        (Range(int, 1, 256), True, "is not an integer"),
        (Range(int, 1, 3, choices=(1, 3)), "2", "is not allowed (allowed 1 or 3)"),
        (Range(float, 0.0, 1e6), "nan", "is not a finite number"),
        (Range(float, 0.0, 1e6), "inf", "is not a finite number"),
        (Range(float, 0.0, 1e6), "1e999", "is not a finite number"),
        (Range(float, 0.0, 1e6), math.inf, "is not a finite number"),
        (Range(float, 0.0, 1e6), " 3", "is not a finite number"),
        (Range(float, 0.0, 1e6), "-1", "is out of range (allowed 0..1e+06)"),
    ],
)
def test_range_refuses_with_a_reason(allowed, value, reason):
    with pytest.raises(ValueError) as err:
        allowed.parse(value)
    assert reason in str(err.value)


def test_every_range_is_sane():
    """Bounds that keep allocations small: an input_multiple or max_side at the cap cannot ask for gigabytes."""
    for key, allowed in METADATA_RANGES.items():
        assert key.startswith(contract.METADATA_PREFIX)
        assert allowed.low <= allowed.high and math.isfinite(allowed.high), key
    worst_pad = METADATA_RANGES["edgeae.input_multiple"].high - 1
    assert worst_pad < 1024  # a 1-pixel frame padded at the cap stays under 1 MB per channel
    assert METADATA_RANGES["edgeae.anomaly.norm_std"].low == contract.NORM_STD_FLOOR > 0


def test_model_keeps_the_contract_names():
    """Callers imported these from edge_runtime.model; they are the contract's objects, not copies."""
    for name in ("SCHEMA_VERSION", "MANIFEST_NAME", "BUNDLE_FORMAT", "TASKS", "GRAPHS", "PRECISIONS", "GRAPH_IO",
                 "REQUIRED_METADATA", "MIN_OPSET", "MAX_OPSET", "MAX_MODEL_BYTES", "MAX_MANIFEST_BYTES"):  # fmt: skip
        assert getattr(model, name) is getattr(contract, name), name


def test_docs_list_every_range():
    """docs/bundle.md states the allowed range of every number the runtime checks, as the contract has it."""
    text = (ROOT / "docs" / "bundle.md").read_text()
    for key, allowed in METADATA_RANGES.items():
        rows = [line for line in text.splitlines() if line.startswith(f"| `{key}`")]
        assert rows, f"docs/bundle.md has no row for {key}"
        assert allowed.describe() in rows[0], (key, allowed.describe(), rows[0])
    assert f"opset {contract.MIN_OPSET} to {contract.MAX_OPSET}" in text


# --------------------------------------------------------------------------------------------------------------
# Writer and reader agree: one value each


def test_agree_schema_version_and_names():
    md = pytest.importorskip("export.metadata")
    assert md.SCHEMA_VERSION is contract.SCHEMA_VERSION == 1
    assert md.METADATA_PREFIX is contract.METADATA_PREFIX
    assert md.PER_FILE_KEYS is contract.PER_FILE_KEYS


def test_agree_file_names():
    from edge_runtime import anomaly, codec

    assert anomaly.STATS_NAME is contract.STATS_NAME
    assert codec.ENTROPY_FILE == contract.ENTROPY_NAME
    assert contract.graph_file_name("encoder", "int8") == "encoder.int8.onnx"


def test_agree_opsets():
    """The writer's range lies inside the reader's; `edgeae export --opset` offers exactly the writer's range."""
    pytest.importorskip("torch")
    from export import onnx_export as ox
    from export.cli import export

    assert ox.MIN_OPSET is contract.MIN_OPSET
    assert contract.MIN_OPSET <= contract.DEFAULT_OPSET <= contract.EXPORT_MAX_OPSET <= contract.MAX_OPSET
    opset = next(p for p in export.params if p.name == "opset")
    assert (opset.type.min, opset.type.max, opset.default) == (
        contract.MIN_OPSET,
        contract.EXPORT_MAX_OPSET,
        contract.DEFAULT_OPSET,
    )


def test_torchscript_exporter_limit_is_the_writers_max():
    """EXPORT_MAX_OPSET is what torch's TorchScript exporter supports; past it torch only warns."""
    torch_constants = pytest.importorskip("torch.onnx._constants")
    assert contract.EXPORT_MAX_OPSET == torch_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    assert contract.MAX_OPSET <= torch_constants.ONNX_MAX_OPSET


def test_agree_threshold_floors():
    """Two floors, two names: export's 3.0 and calibrate's 4.0 come from the contract, and the rules written into
    manifests quote them."""
    from edge_runtime import calibration as anomaly

    md = pytest.importorskip("export.metadata")
    assert contract.EXPORT_THRESHOLD_FLOOR == 3.0 and contract.DEVICE_THRESHOLD_FLOOR == 4.0
    assert md.EXPORT_THRESHOLD_FLOOR is contract.EXPORT_THRESHOLD_FLOOR
    assert anomaly.THRESHOLD_FLOOR == contract.DEVICE_THRESHOLD_FLOOR
    assert f"max({contract.DEVICE_THRESHOLD_FLOOR}," in anomaly.CALIBRATION_RULE
    # export's rule: normal scores all 0 but one make the 99th percentile tiny, so the floor decides
    assert md.anomaly_calibration([0.0] * 99 + [1.0])["threshold"] == contract.EXPORT_THRESHOLD_FLOOR
    pytest.importorskip("torch")
    from export import bundle

    assert f"max({contract.EXPORT_THRESHOLD_FLOOR}," in bundle.CALIBRATION_RULE


def test_agree_latent_and_side_limits_with_the_eae_format():
    md = pytest.importorskip("export.metadata")
    assert md.LATENT_STRIDE is contract.LATENT_STRIDE == bitstream.LATENT_STRIDE
    assert contract.MAX_LATENT_CHANNELS == bitstream.MAX_LATENT_CHANNELS
    assert contract.MAX_SIDE_LIMIT == bitstream.MAX_SIDE
    assert md.EXPORT_MAX_SIDE is contract.EXPORT_MAX_SIDE <= contract.MAX_SIDE_LIMIT


@pytest.mark.parametrize("task", ["denoise", "anomaly", "compress"])
def test_what_export_writes_the_runtime_accepts(task):
    """Every metadata value export writes passes the reader's range checks (graph metadata and manifest contract)."""
    md = pytest.importorskip("export.metadata")
    cfg = {"channels": 3, "multiple": 64, "quality": 2, "m": 192}
    calibration = md.anomaly_calibration([0.1, 0.2, 0.15, 0.12]) if task == "anomaly" else None
    graph = contract.GRAPHS_OF_TASK[task][0]
    meta = md.graph_metadata(task=task, graph=graph, precision="int8", model_cfg=cfg, run_id="r@0",
                             parent_sha256="0" * 64, macs_per_pixel=1, params=1, calibration=calibration)  # fmt: skip
    numbers = model.check_metadata(meta, "written")
    assert numbers["edgeae.input_multiple"] == 64 and numbers["edgeae.max_side"] == contract.EXPORT_MAX_SIDE
    model.check_metadata(md.contract(meta), "written", prefix=contract.METADATA_PREFIX)
    model.check_schema(meta, "written")


def test_check_metadata_messages_are_one_line_with_key_value_and_range():
    with pytest.raises(ModelRejectedError) as err:
        model.check_metadata({"edgeae.input_multiple": "60000"}, "m.onnx")
    assert str(err.value) == "m.onnx: metadata edgeae.input_multiple='60000' is out of range (allowed 1..256)"
    with pytest.raises(ModelRejectedError, match=re.escape("manifest.json contract max_side=0 is out of range")):
        model.check_metadata({"max_side": 0}, "b", prefix="edgeae.", what="manifest.json contract")
