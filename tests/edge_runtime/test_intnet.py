"""edge_runtime.intnet: the integer hyper-synthesis against hand-computed answers (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.intnet import IntConv, IntHyperSynthesis, depth_to_space2


def one(w, b=0, shift=1, lo=-1000, hi=1000, upsample=1) -> IntConv:
    w = np.asarray(w, dtype=np.int64)
    cout = w.shape[0]
    return IntConv(w, np.full(cout, b), np.full(cout, shift), lo, hi, upsample)


def test_rescaling_rounds_half_up_with_an_arithmetic_shift():
    net = IntHyperSynthesis([one([[[[1]]]], shift=1, lo=0, hi=1000)])
    layer = one([[[[1]]]], shift=1)
    x = np.arange(-3, 4).reshape(1, 1, 1, 7)
    from edge_runtime.intnet import conv_layer

    assert conv_layer(layer, x)[0, 0, 0].tolist() == [-1, -1, 0, 0, 1, 1, 2]  # x/2: -1.5 -> -1, 0.5 -> 1
    assert net.indices(x[0]).tolist() == [[[0, 0, 0, 0, 1, 1, 2]]]  # the last clamp starts at 0


def test_conv_matches_python_integer_loops():
    rng = np.random.default_rng(0)
    w = rng.integers(-(1 << 14), 1 << 14, (5, 3, 3, 3))
    b = rng.integers(-(1 << 20), 1 << 20, 5)
    s = rng.integers(8, 16, 5)
    layer = IntConv(w, b, s, -50, 300)
    x = rng.integers(-255, 256, (1, 3, 4, 6))
    ref = np.zeros((5, 4, 6), dtype=object)
    for o in range(5):
        for yy in range(4):
            for xx in range(6):
                acc = int(b[o])
                for c in range(3):
                    for dy in range(3):
                        for dx in range(3):
                            iy, ix = yy + dy - 1, xx + dx - 1
                            if 0 <= iy < 4 and 0 <= ix < 6:
                                acc += int(w[o, c, dy, dx]) * int(x[0, c, iy, ix])
                acc = (acc + (1 << (int(s[o]) - 1))) >> int(s[o])
                ref[o, yy, xx] = min(max(acc, -50), 300)
    net = IntHyperSynthesis([layer, one(np.eye(5, dtype=np.int64)[:, :, None, None] * 2, lo=0, hi=400)])
    hidden, _ = net.features(x)
    assert hidden[0].tolist() == ref.tolist()
    assert np.array_equal(net.features(x, exact="int64")[0], hidden)


def test_depth_to_space_is_pixelshuffle_order():
    x = np.arange(2 * 4 * 2 * 3).reshape(1, 8, 2, 3)
    y = depth_to_space2(x)
    assert y.shape == (1, 2, 4, 6)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert np.array_equal(y[0, c, i::2, j::2], x[0, 4 * c + 2 * i + j])


def test_float64_product_is_exact_where_float32_is_not():
    rng = np.random.default_rng(1)
    w = rng.integers(-(1 << 20), 1 << 20, (4, 8, 3, 3))
    big = 1 << 45  # shift 1 keeps the low bits that a float32 product would lose
    net = IntHyperSynthesis([IntConv(w, np.zeros(4, np.int64), np.full(4, 1), -big, big),
                             one(np.ones((1, 4, 1, 1)), lo=0, hi=63)], input_max=(1 << 15) - 1)  # fmt: skip
    z = rng.integers(-(1 << 15), 1 << 15, (8, 5, 5))
    a = net.features(z)[0]
    assert np.array_equal(a, net.features(z, exact="int64")[0])
    assert np.array_equal(net.indices(z), net.indices(z))


def test_inputs_are_clipped_and_must_be_integers():
    net = IntHyperSynthesis([one([[[[1]]]], shift=1, lo=0, hi=1 << 20)], input_max=100)
    assert net.indices(np.array([[[10**9, -(10**9), 7]]])).tolist() == [[[50, 0, 4]]]
    with pytest.raises(ValueError, match="integers"):
        net.indices(np.zeros((1, 1, 1), np.float32))


def test_construction_checks():
    with pytest.raises(ValueError, match="2\\*\\*52"):
        IntHyperSynthesis([one(np.full((1, 1, 3, 3), 1 << 40), lo=0, hi=63)])
    with pytest.raises(ValueError, match="shift"):
        one([[[[1]]]], shift=0)
    with pytest.raises(ValueError, match="channels"):
        IntHyperSynthesis([one(np.ones((2, 1, 1, 1))), one(np.ones((1, 3, 1, 1)), lo=0, hi=3)])
    with pytest.raises(ValueError, match="table indices"):
        IntHyperSynthesis([one([[[[1]]]], lo=-1, hi=3)])
    with pytest.raises(ValueError, match="edgeae-intnet"):
        IntHyperSynthesis.from_arrays({"format": "other"}, {})


def test_arrays_round_trip():
    rng = np.random.default_rng(2)
    net = IntHyperSynthesis([IntConv(rng.integers(-99, 99, (8, 2, 3, 3)), rng.integers(-9, 9, 8), np.full(8, 4),
                                     0, 255, upsample=2),
                             one(rng.integers(-9, 9, (3, 2, 1, 1)), b=200, shift=3, lo=0, hi=63)])  # fmt: skip
    meta, arrays = net.to_arrays()
    back = IntHyperSynthesis.from_arrays(meta, arrays)
    z = rng.integers(-20, 20, (2, 2, 3, 3))
    assert back.indices(z).shape == (2, 3, 6, 6) and np.array_equal(back.indices(z), net.indices(z))
