"""Integer hyper-synthesis: quantized hyper-latents -> entropy-table indices, bit-exact on every machine.

The scale hyperprior codes each latent with one of a fixed set of CDF tables (one per quantized scale).  Encoder
and decoder must pick the *same* table for every latent or the range decoder desynchronises, so the path from
the hyper-latents ``z_hat`` (integers read from the stream) to the table indices is defined here with integer
arithmetic only (Balle, Johnston & Minnen 2019, "Integer networks for data compression with latent-variable
models"):

* each layer is a convolution with integer weights and int64 accumulation, an integer bias, a per-output-channel
  rescaling ``(acc + 2**(s-1)) >> s`` (round half up, an arithmetic shift), then a clamp: ``[0, act_max]``
  for hidden layers (an integer ReLU with a ceiling) and ``[0, table_size - 1]`` for the last one, whose
  output *is* the table index;
* a layer may be followed by a depth-to-space x2 rearrangement (channel ``4c + 2i + j`` goes to channel ``c``,
  row offset ``i``, column offset ``j``: PyTorch's PixelShuffle order); it moves integers, it computes nothing;
* inputs are clipped to ``[-input_max, input_max]`` first (part of the definition: a damaged or hostile
  stream cannot push a sum out of range).

Exactness does not depend on the BLAS: every product and every partial sum is an integer whose magnitude is
bounded (checked when the network is built) below 2**52, so the float64 matrix product that does the work
represents each of them exactly, in any summation order, with or without FMA, on x86 and arm64 alike.  The
int64 reference (``exact="int64"``) computes the same thing with numpy's integer matmul (slow, no BLAS); tests
compare the two.

Standard library and numpy only: the device install imports this without torch or onnx.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Every accumulator (products, partial sums, bias, rounding term) stays below this in magnitude, so float64
#: holds it exactly.
EXACT_LIMIT = 1 << 52
MAX_SHIFT = 40


@dataclass(frozen=True)
class IntConv:
    """One integer layer: conv (zero 'same' padding, stride 1) -> + bias -> rescale by shift -> clamp [lo, hi]
    -> optional depth-to-space x2."""

    weight: np.ndarray  # int64 (cout, cin, k, k), k odd
    bias: np.ndarray  # int64 (cout,)
    shift: np.ndarray  # int64 (cout,), each in [1, MAX_SHIFT]
    lo: int
    hi: int
    upsample: int = 1  # 1 or 2 (depth-to-space after the clamp; cout divisible by 4)

    def __post_init__(self):
        w, b, s = (np.asarray(a) for a in (self.weight, self.bias, self.shift))
        if w.ndim != 4 or w.shape[2] != w.shape[3] or w.shape[2] % 2 != 1:
            raise ValueError(f"weight must be (cout, cin, k, k) with k odd, got {w.shape}")
        if not all(np.issubdtype(a.dtype, np.integer) for a in (w, b, s)):
            raise ValueError("weight, bias and shift must be integer arrays")
        if b.shape != (w.shape[0],) or s.shape != (w.shape[0],):
            raise ValueError(f"bias and shift must be ({w.shape[0]},), got {b.shape} and {s.shape}")
        if s.min() < 1 or s.max() > MAX_SHIFT:
            raise ValueError(f"shifts must lie in [1, {MAX_SHIFT}]")
        if not self.lo <= self.hi:
            raise ValueError("clamp range is empty")
        if self.upsample not in (1, 2) or (self.upsample == 2 and w.shape[0] % 4):
            raise ValueError("upsample must be 1, or 2 with cout divisible by 4")
        object.__setattr__(self, "weight", w.astype(np.int64))
        object.__setattr__(self, "bias", b.astype(np.int64))
        object.__setattr__(self, "shift", s.astype(np.int64))

    @property
    def cin(self) -> int:
        return int(self.weight.shape[1])

    @property
    def cout(self) -> int:
        """Channels after depth-to-space."""
        return int(self.weight.shape[0]) // (self.upsample**2)

    def bound(self, in_max: int) -> int:
        """Largest magnitude any accumulator can reach with inputs in [-in_max, in_max]."""
        w1 = np.abs(self.weight).reshape(self.weight.shape[0], -1).sum(axis=1)
        return int((w1 * in_max + np.abs(self.bias) + (1 << self.shift)).max())


def _im2col(x: np.ndarray, k: int) -> np.ndarray:
    """(N, C, H, W) -> (N, H*W, C*k*k) patches with zero padding k//2, in (c, dy, dx) order."""
    n, c, h, w = x.shape
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # (N, C, H, W, k, k)
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n, h * w, c * k * k)


def depth_to_space2(x: np.ndarray) -> np.ndarray:
    """(N, 4C, H, W) -> (N, C, 2H, 2W) in PixelShuffle(2) order."""
    n, c4, h, w = x.shape
    c = c4 // 4
    return x.reshape(n, c, 2, 2, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c, 2 * h, 2 * w)


def conv_layer(layer: IntConv, x: np.ndarray, exact: str = "float64") -> np.ndarray:
    """Apply one integer layer to int64 (N, C, H, W); returns int64 (N, C', H', W')."""
    n, c, h, w = x.shape
    if c != layer.cin:
        raise ValueError(f"layer takes {layer.cin} channels, got {c}")
    cout, _, k, _ = layer.weight.shape
    cols = _im2col(x, k)  # (N, HW, CKK)
    wm = layer.weight.reshape(cout, -1).T  # (CKK, cout)
    if exact == "float64":
        acc = np.matmul(cols.astype(np.float64), wm.astype(np.float64)).astype(np.int64)
    elif exact == "int64":
        acc = np.matmul(cols.astype(np.int64), wm)
    else:
        raise ValueError(f"exact must be 'float64' or 'int64', got {exact!r}")
    acc = acc + layer.bias + (np.int64(1) << (layer.shift - 1))
    out = np.clip(acc >> layer.shift, layer.lo, layer.hi)  # (N, HW, cout): arithmetic shift = floor division
    out = out.transpose(0, 2, 1).reshape(n, cout, h, w)
    return depth_to_space2(out) if layer.upsample == 2 else out


class IntHyperSynthesis:
    """A stack of :class:`IntConv` layers mapping int hyper-latents to int32 table indices."""

    def __init__(self, layers: list[IntConv], input_max: int = (1 << 15) - 1):
        if not layers:
            raise ValueError("no layers")
        self.layers = list(layers)
        self.input_max = int(input_max)
        in_max = self.input_max
        for i, layer in enumerate(self.layers):
            if i and layer.cin != self.layers[i - 1].cout:
                raise ValueError(f"layer {i} takes {layer.cin} channels, layer {i - 1} gives {self.layers[i - 1].cout}")
            if layer.bound(in_max) >= EXACT_LIMIT:
                raise ValueError(f"layer {i}: accumulators could reach 2**52; weights or shifts too large")
            in_max = max(abs(layer.lo), abs(layer.hi))
        if self.layers[-1].lo < 0:
            raise ValueError("the last layer gives table indices: its clamp must start at 0 or above")

    @property
    def table_size(self) -> int:
        return self.layers[-1].hi + 1

    @property
    def upsampling(self) -> int:
        f = 1
        for layer in self.layers:
            f *= layer.upsample
        return f

    def features(self, z_hat: np.ndarray, exact: str = "float64") -> list[np.ndarray]:
        """Every layer's integer output for int (N, C, h, w) or (C, h, w) input (batched shape kept)."""
        z = np.asarray(z_hat)
        if not np.issubdtype(z.dtype, np.integer):
            raise ValueError(f"hyper-latents must be integers, got {z.dtype}")
        single = z.ndim == 3
        x = np.clip(z[None] if single else z, -self.input_max, self.input_max).astype(np.int64)
        if x.ndim != 4:
            raise ValueError(f"hyper-latents must be (N, C, h, w) or (C, h, w), got shape {z.shape}")
        outs = []
        for layer in self.layers:
            x = conv_layer(layer, x, exact)
            outs.append(x[0] if single else x)
        return outs

    def indices(self, z_hat: np.ndarray, exact: str = "float64") -> np.ndarray:
        """int (N, C, h, w) or (C, h, w) hyper-latents -> int32 table indices (N, M, f*h, f*w) or (M, f*h, f*w),
        f = :attr:`upsampling`."""
        return self.features(z_hat, exact)[-1].astype(np.int32)

    # --- plain-array form (for safetensors / ONNX initializers / JSON), no pickle ------------------------------

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able description, named int64 arrays) that :meth:`from_arrays` rebuilds exactly."""
        meta = {"format": "edgeae-intnet", "version": 1, "input_max": self.input_max,
                "layers": [{"lo": int(layer.lo), "hi": int(layer.hi), "upsample": int(layer.upsample)}
                           for layer in self.layers]}  # fmt: skip
        arrays = {}
        for i, layer in enumerate(self.layers):
            arrays[f"l{i}.weight"] = layer.weight
            arrays[f"l{i}.bias"] = layer.bias
            arrays[f"l{i}.shift"] = layer.shift
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> IntHyperSynthesis:
        if not isinstance(meta, dict) or meta.get("format") != "edgeae-intnet" or meta.get("version") != 1:
            raise ValueError("not an edgeae-intnet version 1 description")
        layers = []
        for i, spec in enumerate(meta["layers"]):
            layers.append(IntConv(arrays[f"l{i}.weight"], arrays[f"l{i}.bias"], arrays[f"l{i}.shift"],
                                  int(spec["lo"]), int(spec["hi"]), int(spec.get("upsample", 1))))  # fmt: skip
        return cls(layers, int(meta["input_max"]))
