"""Anomaly scoring on a busy fixed-camera scene (issue 16): a synthetic street clip, the issue's protocol, metrics.

The scene (numpy + OpenCV, deterministic by seed):

* a 640x360 background cut from a real photograph (default: Urban100 ``img_070``, a plaza in front of a
  building, from ``--data``/photos_train), a ground plane with perspective (a person's height grows with the
  foot's distance below the horizon);
* "people": upright figures (legs, torso, arms, head; antialiased shapes) textured with crops of other
  photographs (BSDS500) tinted to clothing colours, shaded like a cylinder, with a soft contact shadow, walking
  across at 0.45-0.9 body heights per second, some diagonally in depth, some pausing; they enter and leave,
  occlude each other and whatever is behind them (drawn far to near); 4-10 in view (6.7 on average, seed 0);
* slow lighting drift (2-4 % over the clip, a slight colour-temperature drift) plus flicker (0.5 % at a few Hz
  and 0.3 % per frame);
* camera vibration: a smooth sum of sinusoids (about 0.5 px std) plus occasional 1-2 px bumps, sub-pixel;
* sensor noise (Gaussian, sigma 2-4 per clip) and mild JPEG compression (quality 85-92) per frame;
* 15 frames/s, written as lossless FFV1 .mkv, so the runtime sees exactly these frames.

Foreign objects ("parked / abandoned" things: a box, a bag, a suitcase, a small cart), 30-90 px, are textured
with crops of photographs from another set (LIVE1, Set14; tinted toward muted colours), shaded, with a contact
shadow and antialiased edges; one stands at a fixed place on the ground for a 10-frame block, drawn in depth
order, so people walking in front of it occlude it (the labels give the visible fraction).

Protocol (issue 16): calibrate with the CLI defaults on the first 200 frames (their own clip), with
``edgeae calibrate MODEL --source FIRST200.mkv --out OUT/calibrated`` (or, on a runtime without ``--out``, on a
copy of the bundle), then ``edgeae score OUT/calibrated TEST.mkv --events ...`` on the rest, foreign objects
pasted into alternate 10-frame blocks (clean first). From the events: per-frame AUROC of ``score`` (clean vs
pasted), false alarms (clean frames ``above_threshold`` at the stored threshold), detections, the same for
``alarm`` (hysteresis), per block, and trivial baselines on the same split (frame mean brightness and std) to
catch a confound. Each false alarm is attributed from the ground truth (the people boxes, the lighting, the
true camera jitter against the registration ``shift`` the events carry).

Second scenario: a lighting ramp of +30 % and of -30 % over 10 minutes, one frame every 2 s (300 frames, the
clip at 0.5 frames/s so the events' ``time`` advances 2 s per frame), objects pasted in 5 blocks, scored with
the bundle calibrated above (same camera and scene; the ramp starts at its lighting), with ``edgeae score`` and,
when ``edgeae run --help`` offers ``--adapt``, with ``edgeae run ... --adapt --events`` too.

When ``edgeae run --help`` offers ``--adapt``, the busy test clip also goes through ``edgeae run --adapt``. The
anomaly map is read through the runtime's Python API on every 4th test frame to say where it peaks (on a person,
on the object, elsewhere) and what AUROC an oracle that masks people by their true boxes would reach.
``--people-rate 0`` makes the same clip with an empty plaza (an ablation: what people cost).

Last, the synthetic fixed-camera benchmark (benchmarks/anomaly_bench.py) runs once to record it stays >= 0.99.

``python -m benchmarks.street_bench --models models --out street-out [--data ../shared/data] [--seed 0]
[--frames 600]`` writes OUT/street_results.json (every number, the commands, versions, the threshold),
OUT/street_results.md (tables) and OUT/street_frames.png (a contact sheet of generated frames).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from training.metrics import auroc

REPO = Path(__file__).resolve().parents[1]
SIZE = (640, 360)  # (W, H)
FPS = 15.0
CALIB_FRAMES = 200
BLOCK = 10  # frames per block; odd blocks of the test clip carry an object
DEFAULT_BACKGROUND = "photos_train/urban100_img_070.png"
# Where the ground is in the default background, as fractions of the frame height (measured on the photo): the
# horizon of the ground plane, and the range of foot positions people and objects use.
HORIZON = 0.47
GROUND_TOP = 0.54
GROUND_BOTTOM = 1.03
PERSON_K = 0.95  # person height = PERSON_K * (foot_y - horizon_y)
RAMP_FRAMES = 300
RAMP_EVERY_S = 2.0
RAMP_CHANGE = 0.30
RAMP_BLOCKS = (30, 90, 150, 210, 270)  # first frame of each 10-frame block with an object in the ramp clips
OBJECT_KINDS = ("box", "bag", "suitcase", "cart")
OBJECT_SIZE = (30, 90)  # px, longest side of the object's body at 640x360

CLOTHES = np.array([  # BGR, muted: navy, black, charcoal, grey, off-white, beige, brown, olive, denim, maroon, teal
    (70, 40, 30), (30, 28, 28), (60, 58, 55), (120, 118, 115), (200, 205, 210), (150, 175, 195), (45, 70, 100),
    (60, 95, 90), (140, 95, 60), (50, 40, 110), (110, 110, 50), (90, 120, 170), (40, 60, 140)], np.float32)  # fmt: skip
TROUSERS = np.array([(110, 70, 40), (35, 32, 30), (70, 70, 70), (120, 150, 170), (60, 45, 40), (140, 100, 70)],
                    np.float32)  # fmt: skip
SKIN = np.array([(170, 195, 235), (140, 170, 215), (110, 140, 190), (80, 105, 150), (55, 75, 110)], np.float32)
HAIR = np.array([(20, 20, 25), (30, 45, 70), (60, 90, 140), (150, 150, 150), (40, 40, 45)], np.float32)
OBJECT_TONES = np.array([  # cardboard, black, grey, navy, dark red, khaki, dark green, silver
    (90, 130, 170), (35, 35, 35), (110, 110, 110), (80, 50, 35), (45, 45, 120), (120, 160, 175), (50, 80, 50),
    (170, 170, 165)], np.float32)  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# Photographs


def cover(img: np.ndarray, width: int, height: int, anchor_y: float = 0.5) -> np.ndarray:
    """Resize ``img`` so it covers (width, height) and crop it there (horizontally centred, ``anchor_y`` 0 = top)."""
    h, w = img.shape[:2]
    scale = max(width / w, height / h)
    nw, nh = max(width, math.ceil(w * scale)), max(height, math.ceil(h * scale))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    y, x = round((nh - height) * anchor_y), (nw - width) // 2
    return np.ascontiguousarray(img[y : y + height, x : x + width])


@dataclass
class Photos:
    """The background and the two disjoint pools of texture photographs (uint8 BGR)."""

    background: np.ndarray
    people: list[np.ndarray]
    objects: list[np.ndarray]
    names: dict = field(default_factory=dict)


def load_photos(data: Path, background: str = DEFAULT_BACKGROUND, seed: int = 0, n_textures: int = 40) -> Photos:
    """Background ``data/background``; people textures from photos_train/bsds500_*, object textures from
    live1_color and set14 (a different set: objects do not share the people's textures)."""
    data = Path(data)
    bg_path = Path(background) if Path(background).is_absolute() else data / background
    bg = cv2.imread(str(bg_path), cv2.IMREAD_COLOR)
    if bg is None:
        raise SystemExit(f"{bg_path}: cannot read the background photograph (pass --data or --background)")
    rng = np.random.default_rng([seed, 7])
    people_files = sorted((data / "photos_train").glob("bsds500_*.png"))
    object_files = sorted((data / "live1_color").glob("*.png")) + sorted((data / "set14").glob("*.png"))
    if len(people_files) < 4 or len(object_files) < 4:
        raise SystemExit(f"{data}: needs photos_train/bsds500_*.png, live1_color/ and set14/ (see its README.md)")
    people_files = [people_files[i] for i in rng.choice(len(people_files), min(n_textures, len(people_files)),
                                                        replace=False)]  # fmt: skip
    people = [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in people_files]
    objects = [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in object_files]
    objects = [o for o in objects if o is not None and o.ndim == 3]
    return Photos(bg, people, objects, {"background": str(bg_path), "people": [f.name for f in people_files],
                                        "objects": [f.name for f in object_files]})  # fmt: skip


def _crop(rng: np.random.Generator, img: np.ndarray, w: int, h: int) -> np.ndarray:
    """A random crop of ``img`` with the aspect of (w, h), resized to (w, h)."""
    ih, iw = img.shape[:2]
    s = rng.uniform(0.15, 0.45) * min(ih, iw)
    cw, ch = (s, s * h / w) if w >= h else (s * w / h, s)
    cw, ch = max(4, min(iw, int(cw))), max(4, min(ih, int(ch)))
    x, y = int(rng.integers(0, iw - cw + 1)), int(rng.integers(0, ih - ch + 1))
    return cv2.resize(img[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)


def _tinted(rng: np.random.Generator, photo: np.ndarray, tone: np.ndarray, w: int, h: int,
            photo_mix: float, detail: float) -> np.ndarray:  # fmt: skip
    """A texture: a crop of ``photo`` whose detail modulates ``tone``, mixed with the crop itself by ``photo_mix``."""
    crop = _crop(rng, photo, w, h)
    gray = crop.mean(axis=2, keepdims=True)
    mod = np.clip((gray - gray.mean()) / (gray.std() + 1e-3), -2.5, 2.5)
    tinted = tone * (1.0 + detail * mod)
    own = crop * (tone.mean() / max(float(crop.mean()), 1.0)) ** 0.5  # the photo, pulled toward the tone's level
    return np.clip((1 - photo_mix) * tinted + photo_mix * own, 0, 255).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------
# The scene


@dataclass
class Walker:
    t0: float  # time the walker is at (x0, y0)
    x0: float  # foot position, px in frame coordinates
    y0: float
    speed: float  # body heights per second (signed: + to the right)
    vy: float  # foot y change, frame heights per second
    pause_at: float  # seconds after t0 the walker stops, for pause_s
    pause_s: float
    cadence: float  # strides per second
    phase0: float
    textures: dict  # part -> (Ht, Wt, 3) float32 at a reference size
    width: float  # shoulder width as a fraction of height

    def walked(self, t: float) -> float:
        """Seconds of walking since t0 (pauses removed); negative before t0."""
        d = t - self.t0
        if d > self.pause_at:
            d = max(self.pause_at, d - self.pause_s)
        return d


@dataclass
class Paste:
    """A foreign object at a fixed place: kind, foot (x, y) in frame px, body size (w, h), and its texture."""

    kind: str
    x: float
    y: float
    w: int
    h: int
    texture: np.ndarray
    tone: tuple


@dataclass
class SceneConfig:
    size: tuple[int, int] = SIZE  # (W, H)
    horizon: float = HORIZON
    ground: tuple[float, float] = (GROUND_TOP, GROUND_BOTTOM)
    person_k: float = PERSON_K
    rate: float = 0.55  # walkers entering per second
    noise_sigma: float | None = None  # None: drawn per clip in [2, 4]
    jpeg_quality: int | None = -1  # -1: drawn per clip in [85, 92]; None: no JPEG
    jitter_std: float = 0.5  # px
    bump_every_s: float = 6.0  # mean seconds between 1-2 px vibration bumps
    anchor_y: float = 0.78  # where the background crop sits vertically in the photograph


class StreetScene:
    """A fixed camera over a street or plaza with people walking; ``render(t, ...)`` draws the frame at time t.

    Everything is a function of time and of the seed: the same (seed, t, index) gives the same frame, with or
    without a pasted object (the object is the only difference), so labels and tests can compare both.
    """

    margin = 6  # px of world kept around the frame, for camera jitter

    def __init__(self, background: np.ndarray, people_textures: Sequence[np.ndarray],
                 object_textures: Sequence[np.ndarray], *, seed: int, t_end: float, t_start: float = 0.0,
                 config: SceneConfig | None = None):  # fmt: skip
        self.cfg = cfg = config or SceneConfig()
        self.seed = seed
        self.w, self.h = cfg.size
        m = self.margin
        self.world = cover(background, self.w + 2 * m, self.h + 2 * m, cfg.anchor_y).astype(np.float32)
        self.object_textures = list(object_textures)
        rng = np.random.default_rng([seed, 1])
        self.noise_sigma = cfg.noise_sigma if cfg.noise_sigma is not None else float(rng.uniform(2.0, 4.0))
        q = cfg.jpeg_quality
        self.jpeg_quality = int(rng.integers(85, 93)) if q == -1 else q
        self.drift = float(rng.choice([-1, 1]) * rng.uniform(0.02, 0.04))
        self.tint_drift = rng.uniform(-0.01, 0.01, 3)
        self.flicker = (float(rng.uniform(2.0, 5.0)), float(rng.uniform(0, 2 * np.pi)))
        # Vibration: a few sinusoids, scaled so each axis has about jitter_std, plus bumps.
        self.jit_f = rng.uniform(0.2, 4.0, (2, 5))
        self.jit_p = rng.uniform(0, 2 * np.pi, (2, 5))
        self.jit_a = rng.uniform(0.5, 1.0, (2, 5))
        self.jit_a *= cfg.jitter_std / np.sqrt((self.jit_a**2).sum(axis=1, keepdims=True) / 2)
        n_bumps = int(rng.poisson(max(0.0, t_end - t_start) / cfg.bump_every_s)) if cfg.bump_every_s > 0 else 0
        self.bumps = [(float(rng.uniform(t_start, t_end)), rng.uniform(-1.0, 1.0, 2) * rng.uniform(1.0, 2.0) / 1.0,
                       float(rng.uniform(0.15, 0.4))) for _ in range(n_bumps)]  # fmt: skip
        self.t_range = (t_start, t_end)
        self.walkers = self._walkers(rng, people_textures, t_start - 40.0, t_end)

    # ---- geometry
    def person_height(self, foot_y: float) -> float:
        return self.cfg.person_k * (foot_y - self.cfg.horizon * self.h)

    def foot_y_for_height(self, height: float) -> float:
        return self.cfg.horizon * self.h + height / self.cfg.person_k

    def _sample_foot_y(self, rng: np.random.Generator) -> float:
        """Log-uniform in height: the camera sees more ground far away, so more small (far) people."""
        lo, hi = (self.person_height(f * self.h) for f in self.cfg.ground)
        return self.foot_y_for_height(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))

    def _walkers(self, rng, textures, t_from: float, t_to: float) -> list[Walker]:
        out: list[Walker] = []
        if self.cfg.rate <= 0:
            return out
        t = t_from
        while True:
            t += float(rng.exponential(1.0 / self.cfg.rate))
            if t > t_to:
                break
            y = self._sample_foot_y(rng)
            ph = self.person_height(y)
            right = bool(rng.random() < 0.5)
            speed = float(rng.uniform(0.45, 0.9)) * (1 if right else -1)
            vy = float(rng.normal(0, 0.004))
            if rng.random() < 0.15:  # walking in depth as well
                vy = float(rng.choice([-1, 1]) * rng.uniform(0.01, 0.025))
            x0 = -0.4 * ph if right else self.w + 0.4 * ph
            pause = (float(rng.uniform(1.0, 8.0)), float(rng.uniform(1.0, 4.0))) if rng.random() < 0.15 else (1e9, 0.0)
            tex = {}
            top_tone, leg_tone = CLOTHES[rng.integers(len(CLOTHES))], TROUSERS[rng.integers(len(TROUSERS))]
            patterned = rng.random() < 0.3
            tex["torso"] = _tinted(rng, textures[rng.integers(len(textures))], top_tone, 32, 48,
                                   0.6 if patterned else 0.0, rng.uniform(0.06, 0.18))  # fmt: skip
            tex["legs"] = _tinted(rng, textures[rng.integers(len(textures))], leg_tone, 16, 48, 0.0,
                                  rng.uniform(0.05, 0.12))  # fmt: skip
            tex["skin"] = SKIN[rng.integers(len(SKIN))] * rng.uniform(0.9, 1.05)
            tex["hair"] = HAIR[rng.integers(len(HAIR))]
            tex["shoes"] = np.float32([30, 30, 32]) * rng.uniform(0.7, 2.0)
            tex["sleeves"] = bool(rng.random() < 0.7)
            out.append(Walker(t, x0, y, speed, vy, *pause, float(rng.uniform(0.85, 1.05)),
                              float(rng.uniform(0, 2 * np.pi)), tex, float(rng.uniform(0.24, 0.3))))  # fmt: skip
        return out

    def walker_state(self, wk: Walker, t: float) -> tuple[float, float, float, float, bool] | None:
        """(foot x, foot y, height, stride phase, walking) at time t, or None when not in view."""
        d = wk.walked(t)
        if d < 0:
            return None
        y = wk.y0 + wk.vy * self.h * d
        lo, hi = (f * self.h for f in self.cfg.ground)
        if not lo <= y <= hi + 0.05 * self.h:
            return None
        ph = self.person_height(y)
        x = wk.x0 + wk.speed * ph * d
        if x < -0.5 * ph or x > self.w + 0.5 * ph:
            return None
        walking = not (wk.pause_at < t - wk.t0 < wk.pause_at + wk.pause_s)
        return x, y, ph, wk.phase0 + 2 * np.pi * wk.cadence * d, walking

    def jitter(self, t: float) -> np.ndarray:
        """Camera displacement (jx, jy) in px at time t: the frame shows the world shifted by -j."""
        j = (self.jit_a * np.sin(2 * np.pi * self.jit_f * t + self.jit_p)).sum(axis=1)
        for tb, amp, dur in self.bumps:
            if abs(t - tb) < 3 * dur:
                j = j + amp * math.exp(-0.5 * ((t - tb) / dur) ** 2) * math.cos(2 * np.pi * 3.0 * (t - tb))
        return np.clip(j, -2.5, 2.5)

    def gain(self, t: float, rng: np.random.Generator | None = None) -> float:
        """Lighting gain at time t: slow drift over the clip plus flicker."""
        t0, t1 = self.t_range
        g = 1.0 + self.drift * (t - t0) / max(1e-6, t1 - t0)
        g += 0.005 * math.sin(2 * np.pi * self.flicker[0] * t + self.flicker[1])
        if rng is not None:
            g += float(rng.normal(0, 0.003))
        return g

    # ---- drawing
    def _person(self, wk: Walker, ph: float, phase: float, walking: bool) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(colour (h, w, 3) float32, alpha (h, w) float32, left x offset, top y offset from the foot)."""
        s = 3  # supersampling of the shapes
        pw, phh = int(np.ceil(0.75 * ph)) + 4, int(np.ceil(1.02 * ph)) + 4
        cx = pw / 2
        amp = 0.35 if walking else 0.03
        swing = amp * math.sin(phase)
        colour = np.zeros((phh, pw, 3), np.float32)
        alpha = np.zeros((phh, pw), np.float32)

        def mask_of(draw: Callable[[np.ndarray], None]) -> np.ndarray:
            big = np.zeros((phh * s, pw * s), np.uint8)
            draw(big)
            return cv2.resize(big, (pw, phh), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0

        def limb(top: tuple[float, float], length: float, width: float, angle: float):
            x0, y0 = top
            x1, y1 = x0 + length * math.sin(angle), y0 + length * math.cos(angle)
            pts = np.array([[x0, y0], [x1, y1]]) * s

            def draw(img):
                cv2.line(img, tuple(int(v) for v in pts[0]), tuple(int(v) for v in pts[1]), 255,
                         max(1, int(width * s)), cv2.LINE_AA)  # fmt: skip

            return draw

        def paint(m: np.ndarray, tex):
            nonlocal colour, alpha
            if isinstance(tex, np.ndarray) and tex.ndim == 3:
                tex = cv2.resize(tex, (pw, phh), interpolation=cv2.INTER_LINEAR)
            colour = colour * (1 - m[:, :, None]) + np.asarray(tex, np.float32) * m[:, :, None]
            alpha = alpha + m * (1 - alpha)

        top = 2.0
        hip_y, shoulder_y = top + 0.53 * ph, top + 0.19 * ph
        leg_len, leg_w = 0.47 * ph, 0.095 * ph
        arm_len, arm_w = 0.36 * ph, 0.06 * ph
        sw = wk.width * ph
        sleeve = wk.textures["torso"] if wk.textures["sleeves"] else wk.textures["skin"]
        # far limbs, torso, near limbs, head
        paint(mask_of(limb((cx + 0.36 * sw, shoulder_y + 0.03 * ph), arm_len, arm_w, -0.6 * swing)), sleeve * 0.85)
        paint(mask_of(limb((cx - 0.04 * ph, hip_y), leg_len, leg_w, swing)), wk.textures["legs"] * 0.85)
        paint(mask_of(limb((cx + 0.04 * ph, hip_y), leg_len, leg_w, -swing)), wk.textures["legs"])

        def torso(img):
            pts = np.array([[cx - sw / 2, shoulder_y], [cx + sw / 2, shoulder_y], [cx + 0.4 * sw, hip_y + 0.04 * ph],
                            [cx - 0.4 * sw, hip_y + 0.04 * ph]]) * s  # fmt: skip
            cv2.fillConvexPoly(img, pts.astype(np.int32), 255, cv2.LINE_AA)
            r = int(0.045 * ph * s)
            for x in (cx - sw / 2 + 0.045 * ph, cx + sw / 2 - 0.045 * ph):
                cv2.circle(img, (int(x * s), int((shoulder_y + 0.045 * ph) * s)), max(1, r), 255, -1, cv2.LINE_AA)

        paint(mask_of(torso), wk.textures["torso"])
        paint(mask_of(limb((cx - 0.36 * sw, shoulder_y + 0.03 * ph), arm_len, arm_w, 0.6 * swing)), sleeve)
        for sx, ang in ((cx - 0.04 * ph, swing), (cx + 0.04 * ph, -swing)):  # shoes
            fx, fy = sx + leg_len * math.sin(ang), hip_y + leg_len * math.cos(ang)

            def shoe(img, fx=fx, fy=fy):
                cv2.ellipse(img, (int(fx * s), int(fy * s)), (max(1, int(0.06 * ph * s)), max(1, int(0.025 * ph * s))),
                            0, 0, 360, 255, -1, cv2.LINE_AA)  # fmt: skip

            paint(mask_of(shoe), wk.textures["shoes"])
        head_c, head_r = (cx, top + 0.085 * ph), (0.052 * ph, 0.068 * ph)

        def head(img):
            cv2.ellipse(img, (int(head_c[0] * s), int(head_c[1] * s)), (max(1, int(head_r[0] * s)),
                        max(1, int(head_r[1] * s))), 0, 0, 360, 255, -1, cv2.LINE_AA)  # fmt: skip

        def hair(img):
            cv2.ellipse(img, (int(head_c[0] * s), int((head_c[1] - 0.02 * ph) * s)), (max(1, int(head_r[0] * 1.05 * s)),
                        max(1, int(head_r[1] * 0.75 * s))), 0, 180, 360, 255, -1, cv2.LINE_AA)  # fmt: skip

        def neck(img):
            cv2.line(img, (int(cx * s), int((head_c[1] + head_r[1] * 0.8) * s)), (int(cx * s), int(shoulder_y * s)),
                     255, max(1, int(0.04 * ph * s)), cv2.LINE_AA)  # fmt: skip

        paint(mask_of(neck), wk.textures["skin"] * 0.9)
        paint(mask_of(head), wk.textures["skin"])
        paint(mask_of(hair), wk.textures["hair"])
        # Shading: a cylinder across x, light from above.
        xs = (np.arange(pw, dtype=np.float32) - cx) / max(1.0, sw / 2)
        ys = np.arange(phh, dtype=np.float32) / phh
        shade = (1.0 - 0.18 * np.clip(xs, -1.5, 1.5) ** 2)[None, :] * (1.08 - 0.2 * ys)[:, None]
        colour = colour * shade[:, :, None]
        return colour, alpha, int(round(cx)), int(round(hip_y + leg_len))

    def make_paste(self, rng: np.random.Generator, kind: str | None = None) -> Paste:
        """A random foreign object standing on the ground, in view, 30-90 px (scaled with the frame)."""
        kind = kind or OBJECT_KINDS[int(rng.integers(len(OBJECT_KINDS)))]
        scale = self.h / SIZE[1]
        size = rng.uniform(*OBJECT_SIZE) * scale
        aspect = {"box": rng.uniform(0.8, 1.4), "bag": rng.uniform(1.0, 1.4), "suitcase": rng.uniform(0.55, 0.75),
                  "cart": rng.uniform(1.5, 2.2)}[kind]  # w / h  # fmt: skip
        w, h = (size, size / aspect) if aspect >= 1 else (size * aspect, size)
        rel = {"box": 0.35, "bag": 0.25, "suitcase": 0.4, "cart": 0.5}[kind] * rng.uniform(0.8, 1.25)  # of a person
        lo, hi = self.cfg.ground[0] * self.h + 0.04 * self.h, self.h - 4 * scale
        y = float(np.clip(self.foot_y_for_height(max(w, h) / rel), max(lo, h + 2), hi))
        x = float(rng.uniform(w / 2 + 6 * scale, self.w - w / 2 - 6 * scale))
        tone = OBJECT_TONES[int(rng.integers(len(OBJECT_TONES)))]
        photo = self.object_textures[int(rng.integers(len(self.object_textures)))]
        tex = _tinted(rng, photo, tone, max(4, int(w)), max(4, int(h)), float(rng.uniform(0.3, 0.7)),
                      float(rng.uniform(0.1, 0.25)))  # fmt: skip
        return Paste(kind, x, y, max(4, int(round(w))), max(4, int(round(h))), tex, tuple(float(v) for v in tone))

    def _object(self, p: Paste) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(colour, alpha, x offset of the foot point, y offset of the foot point) of a foreign object."""
        s = 3
        pad = 3
        w, h = p.w, p.h
        W, H = w + 2 * pad, h + 2 * pad
        big = np.zeros((H * s, W * s), np.uint8)
        tex = cv2.resize(p.texture, (W, H), interpolation=cv2.INTER_LINEAR)
        shade = np.ones((H, W), np.float32)
        x0, y0, x1, y1 = pad * s, pad * s, (pad + w) * s, (pad + h) * s
        if p.kind == "box":
            top = int(0.22 * h * s)
            side = int(0.2 * w * s)
            cv2.rectangle(big, (x0, y0 + top), (x1 - side, y1), 255, -1, cv2.LINE_AA)
            cv2.fillConvexPoly(big, np.array([[x0, y0 + top], [x0 + side, y0], [x1, y0], [x1 - side, y0 + top]],
                                             np.int32), 255, cv2.LINE_AA)  # fmt: skip
            cv2.fillConvexPoly(big, np.array([[x1 - side, y0 + top], [x1, y0], [x1, y1 - top], [x1 - side, y1]],
                                             np.int32), 255, cv2.LINE_AA)  # fmt: skip
            yy, xx = np.mgrid[0:H, 0:W]
            shade[yy < pad + 0.22 * h] = 1.2  # lit top
            shade[(xx > pad + 0.8 * w) & (yy >= pad + 0.22 * h)] = 0.72  # side in shade
            tape = (np.abs(xx - (pad + 0.4 * w)) < max(1, 0.05 * w)) & (yy > pad + 0.22 * h)
            shade[tape] *= 1.15
        elif p.kind == "bag":
            body_top = y0 + int(0.3 * h * s)
            pts = np.array([[x0 + int(0.1 * w * s), body_top], [x1 - int(0.1 * w * s), body_top], [x1, y1], [x0, y1]])
            cv2.fillConvexPoly(big, pts.astype(np.int32), 255, cv2.LINE_AA)
            cv2.ellipse(big, ((x0 + x1) // 2, body_top), (int(0.25 * w * s), int(0.28 * h * s)), 0, 180, 360, 255,
                        max(1, int(0.06 * h * s)), cv2.LINE_AA)  # fmt: skip
            yy = np.arange(H, dtype=np.float32)[:, None] / H
            shade = shade * (1.1 - 0.3 * yy)
        elif p.kind == "suitcase":
            handle = int(0.1 * h * s)
            r = int(0.12 * w * s)
            cv2.rectangle(big, (x0 + r, y0 + handle), (x1 - r, y1 - int(0.04 * h * s)), 255, -1, cv2.LINE_AA)
            cv2.rectangle(big, (x0, y0 + handle + r), (x1, y1 - int(0.04 * h * s) - r), 255, -1, cv2.LINE_AA)
            for cx_, cy_ in ((x0 + r, y0 + handle + r), (x1 - r, y0 + handle + r), (x0 + r, y1 - int(0.04 * h * s) - r),
                             (x1 - r, y1 - int(0.04 * h * s) - r)):  # fmt: skip
                cv2.circle(big, (cx_, cy_), r, 255, -1, cv2.LINE_AA)
            hx0, hx1 = int((x0 + x1) / 2 - 0.18 * w * s), int((x0 + x1) / 2 + 0.18 * w * s)
            cv2.rectangle(big, (hx0, y0), (hx1, y0 + handle), 255, max(1, int(0.03 * h * s)), cv2.LINE_AA)
            for wx in (x0 + r, x1 - r):
                cv2.circle(big, (wx, y1 - int(0.03 * h * s)), max(1, int(0.04 * h * s)), 255, -1, cv2.LINE_AA)
            xx = (np.arange(W, dtype=np.float32)[None, :] - W / 2) / (W / 2)
            shade = shade * (1.05 - 0.2 * xx**2)
            ribs = np.zeros((H, W), bool)
            for f in (0.33, 0.66):
                ribs[:, int(pad + f * w)] = True
            shade[ribs] *= 0.85
        else:  # cart: a small vehicle-like body with a cabin and two wheels
            wheel = max(2, int(0.2 * h * s))
            body_top = y0 + int(0.35 * h * s)
            cv2.rectangle(big, (x0, body_top), (x1, y1 - wheel), 255, -1, cv2.LINE_AA)
            cv2.fillConvexPoly(big, np.array([[x0 + int(0.25 * w * s), body_top], [x0 + int(0.35 * w * s), y0],
                                              [x1 - int(0.2 * w * s), y0], [x1 - int(0.1 * w * s), body_top]],
                                             np.int32), 255, cv2.LINE_AA)  # fmt: skip
            for wx in (x0 + int(0.22 * w * s), x1 - int(0.22 * w * s)):
                cv2.circle(big, (wx, y1 - wheel), wheel, 255, -1, cv2.LINE_AA)
            yy, xx = np.mgrid[0:H, 0:W]
            win = (yy > pad + 0.05 * h) & (yy < pad + 0.32 * h) & (xx > pad + 0.38 * w) & (xx < pad + 0.78 * w)
            shade[win] = 0.45  # dark windows
            shade[yy > pad + h - 0.4 * h] *= 0.8
            wheels = yy > pad + h - 0.2 * h - 0.2 * h
            for wx in (pad + 0.22 * w, pad + 0.78 * w):
                d = np.hypot(xx - wx, yy - (pad + h - 0.2 * h))
                shade[(d < 0.2 * h) & wheels] = 0.25
        alpha = cv2.resize(big, (W, H), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        alpha = cv2.GaussianBlur(alpha, (0, 0), 0.5)
        colour = np.clip(tex * shade[:, :, None], 0, 255)
        return colour, alpha, pad + w // 2, pad + h

    def _shadow(self, canvas: np.ndarray, x: float, y: float, rx: float, ry: float, depth: float) -> None:
        """Darken an ellipse at the foot point (a contact shadow)."""
        m = self.margin
        x0, x1 = int(x + m - 2 * rx), int(x + m + 2 * rx) + 1
        y0, y1 = int(y + m - 2 * ry), int(y + m + 2 * ry) + 1
        X0, Y0, X1, Y1 = max(0, x0), max(0, y0), min(canvas.shape[1], x1), min(canvas.shape[0], y1)
        if X1 <= X0 or Y1 <= Y0:
            return
        yy, xx = np.mgrid[Y0:Y1, X0:X1].astype(np.float32)
        d = ((xx - x - m) / max(rx, 1)) ** 2 + ((yy - y - m) / max(ry, 1)) ** 2
        a = depth * np.exp(-1.5 * d)
        canvas[Y0:Y1, X0:X1] *= (1 - a)[:, :, None]

    def _blit(self, canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray, left: int, top: int,
              vis: list | None = None) -> tuple[int, int, int, int] | None:  # fmt: skip
        """Alpha-blend a sprite whose top-left is (left, top) in frame px; returns its box in world px, clipped."""
        m = self.margin
        h, w = alpha.shape
        x0, y0 = left + m, top + m
        X0, Y0 = max(0, x0), max(0, y0)
        X1, Y1 = min(canvas.shape[1], x0 + w), min(canvas.shape[0], y0 + h)
        if X1 <= X0 or Y1 <= Y0:
            return None
        a = alpha[Y0 - y0 : Y1 - y0, X0 - x0 : X1 - x0]
        c = colour[Y0 - y0 : Y1 - y0, X0 - x0 : X1 - x0]
        canvas[Y0:Y1, X0:X1] = canvas[Y0:Y1, X0:X1] * (1 - a[:, :, None]) + c * a[:, :, None]
        if vis is not None:  # occlusion of the object drawn earlier: its visible alpha shrinks under this sprite
            obj_alpha, ox0, oy0 = vis
            oh, ow = obj_alpha.shape
            ix0, iy0 = max(X0, ox0), max(Y0, oy0)
            ix1, iy1 = min(X1, ox0 + ow), min(Y1, oy0 + oh)
            if ix1 > ix0 and iy1 > iy0:
                cover_a = a[iy0 - Y0 : iy1 - Y0, ix0 - X0 : ix1 - X0]
                obj_alpha[iy0 - oy0 : iy1 - oy0, ix0 - ox0 : ix1 - ox0] *= 1 - cover_a
        return X0, Y0, X1 - X0, Y1 - Y0

    def render(self, t: float, index: int, *, paste: Paste | None = None, gain: float | None = None,
               stream: int = 0, noise: bool = True) -> tuple[np.ndarray, dict]:  # fmt: skip
        """The frame at time ``t`` (uint8 (H, W, 3) BGR) and its label. ``index`` and ``stream`` seed the
        per-frame randomness (noise, flicker); ``gain`` replaces the scene's lighting when given."""
        rng = np.random.default_rng([self.seed, stream, index])
        m = self.margin
        canvas = self.world.copy()
        items = []
        for wk in self.walkers:
            st = self.walker_state(wk, t)
            if st is not None:
                items.append((st[1], "person", wk, st))
        if paste is not None:
            items.append((paste.y, "object", paste, None))
        items.sort(key=lambda it: it[0])
        people, obj_label, vis = [], None, None
        for _, what, thing, st in items:
            if what == "person":
                x, y, ph, phase, walking = st
                self._shadow(canvas, x, y, 0.17 * ph, 0.03 * ph, 0.35)
                colour, alpha, ox, oy = self._person(thing, ph, phase, walking)
                box = self._blit(canvas, colour, alpha, int(round(x)) - ox, int(round(y)) - oy, vis)
                if box is not None:
                    people.append([box[0] - m, box[1] - m, box[2], box[3]])
            else:
                p = thing
                self._shadow(canvas, p.x, p.y, 0.6 * p.w, 0.1 * p.h + 1.5, 0.4)  # as the footprint below
                colour, alpha, ox, oy = self._object(p)
                left, top = int(round(p.x)) - ox, int(round(p.y)) - oy
                box = self._blit(canvas, colour, alpha, left, top)
                obj_alpha = alpha.copy()
                vis = [obj_alpha, left + m, top + m]
                body = [left + ox - p.w // 2, top + oy - p.h, p.w, p.h]
                rx, ry = 0.6 * p.w, 0.1 * p.h + 1.5  # the contact shadow's reach is 2 rx, 2 ry
                # 3 px more: antialiasing, and the camera's bilinear sub-pixel shift
                fx0, fx1 = min(body[0], int(p.x - 2 * rx)) - 3, max(body[0] + p.w, int(p.x + 2 * rx) + 1) + 3
                fy0, fy1 = body[1] - 3, max(body[1] + p.h, int(p.y + 2 * ry) + 1) + 3
                foot = [fx0, fy0, fx1 - fx0, fy1 - fy0]
                obj_label = {"kind": p.kind, "bbox": body, "footprint": [int(v) for v in foot], "alpha_sum":
                             float(alpha.sum()), "tone": list(p.tone)}  # fmt: skip
        if obj_label is not None and vis is not None:
            obj_label["visible"] = round(float(vis[0].sum()) / max(1e-6, obj_label.pop("alpha_sum")), 3)
        # Camera: jitter (frame shows world shifted by -j), lighting, noise, JPEG.
        j = self.jitter(t)
        mat = np.float32([[1, 0, m + j[0]], [0, 1, m + j[1]]])
        img = cv2.warpAffine(canvas, mat, (self.w, self.h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT)  # fmt: skip
        g = self.gain(t, rng) if gain is None else gain + float(rng.normal(0, 0.003))
        t0, t1 = self.t_range
        tint = 1.0 + self.tint_drift * (t - t0) / max(1e-6, t1 - t0)
        img = img * (g * tint).astype(np.float32)
        if noise and self.noise_sigma > 0:
            img = img + rng.normal(0.0, self.noise_sigma, img.shape).astype(np.float32)
        out = np.clip(np.round(img), 0, 255).astype(np.uint8)
        if noise and self.jpeg_quality:
            ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(self.jpeg_quality)])
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        for box in [obj_label["bbox"], obj_label["footprint"]] if obj_label else []:
            box[0], box[1] = int(round(box[0] - j[0])), int(round(box[1] - j[1]))
        label = {"frame": index, "time": round(t, 4), "pasted": obj_label is not None, "object": obj_label,
                 "people": [[int(round(b[0] - j[0])), int(round(b[1] - j[1])), b[2], b[3]] for b in people],
                 "gain": round(float(g), 5), "jitter": [round(float(j[0]), 3), round(float(j[1]), 3)]}  # fmt: skip
        return out, label


# ------------------------------------------------------------------------------------------------------------
# Clips


def block_pasted(i: int, block: int = BLOCK) -> bool:
    """Alternate blocks of the test clip: block 0 clean, block 1 with an object, ..."""
    return (i // block) % 2 == 1


def test_schedule(scene: StreetScene, n: int, seed: int, block: int = BLOCK) -> dict[int, Paste]:
    """One object per odd block of ``n`` test frames: {frame index in the test clip: Paste}."""
    rng = np.random.default_rng([seed, 3])
    out: dict[int, Paste] = {}
    for b in range(0, (n + block - 1) // block):
        if b % 2 == 1:
            p = scene.make_paste(rng, OBJECT_KINDS[(b // 2) % len(OBJECT_KINDS)])
            for i in range(b * block, min(n, (b + 1) * block)):
                out[i] = p
    return out


def write_mkv(path: Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """Lossless FFV1 in Matroska (any fps, also under 1), verified by reading the frame count back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mkv")
    writer, n = None, 0
    try:
        for f in frames:
            if writer is None:
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"FFV1"), fps, (f.shape[1], f.shape[0]))
                if not writer.isOpened():
                    raise SystemExit(f"{path}: OpenCV cannot write FFV1 here")
            writer.write(np.ascontiguousarray(f))
            n += 1
    finally:
        if writer is not None:
            writer.release()
    cap = cv2.VideoCapture(str(tmp))
    got = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    if got != n:
        raise SystemExit(f"{path}: wrote {n} frames, the file says {got}")
    os.replace(tmp, path)
    return n


# ------------------------------------------------------------------------------------------------------------
# Metrics from the events


def read_events(path: Path) -> tuple[dict, list[dict], list[dict]]:
    """(start line, frame lines, error lines) of the LAST run in an events file (the file is a log)."""
    start: dict = {}
    frames: list[dict] = []
    errors: list[dict] = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        ev = json.loads(line)
        kind = ev.get("type")
        if kind == "start":
            start, frames, errors = ev, [], []
        elif kind == "frame":
            frames.append(ev)
        elif kind == "error":
            errors.append(ev)
    return start, frames, errors


def two_sided(a: float) -> float:
    """How far a score separates the classes in either direction (a confound check): max(a, 1 - a)."""
    return max(a, 1.0 - a)


def _rate(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def frame_metrics(frames: Sequence[dict], labels: Sequence[bool], block: int = BLOCK, tail: int = 3) -> dict:
    """Per-frame and per-block metrics of anomaly events against labels (index = the events' ``frame``).

    Frames missing from the events (skipped) are counted and left out. ``tail``: frames after a pasted block
    during which an alarm that is still on counts as the hysteresis tail of that block, not a new false alarm
    (reported separately).
    """
    by_frame = {int(e["frame"]): e for e in frames}
    labels_arr = np.asarray(labels, bool)
    idx = np.array([i for i in range(len(labels_arr)) if i in by_frame], int)
    if idx.size == 0:
        raise ValueError("no frame lines for the labelled frames")
    lab = labels_arr[idx]
    score = np.array([by_frame[i]["score"] for i in idx], np.float64)
    above = np.array([bool(by_frame[i]["above_threshold"]) for i in idx])
    alarm = np.array([bool(by_frame[i]["alarm"]) for i in idx])
    out: dict = {
        "frames": int(idx.size),
        "missing": int(len(labels_arr) - idx.size),
        "clean": int((~lab).sum()),
        "pasted": int(lab.sum()),
        "auroc": auroc(score, lab) if lab.any() and (~lab).any() else None,
        "false_alarm_rate": _rate(above[~lab]),
        "detection_rate": _rate(above[lab]),
        "alarm_false_rate": _rate(alarm[~lab]),
        "alarm_detection_rate": _rate(alarm[lab]),
        "score_clean": _quantiles(score[~lab]),
        "score_pasted": _quantiles(score[lab]),
    }
    # Alarm frames on clean frames that are only the hysteresis tail of the block before.
    tail_mask = np.zeros(len(labels_arr), bool)
    for i in range(len(labels_arr)):
        if not labels_arr[i] and any(labels_arr[max(0, i - k)] for k in range(1, tail + 1) if i - k >= 0):
            tail_mask[i] = True
    tm = tail_mask[idx]
    out["alarm_false_rate_excl_tail"] = _rate(alarm[~lab & ~tm])
    # Blocks: a pasted block is detected when the alarm is on in any of its frames; a clean block false-alarms
    # when the alarm is on in any of its frames outside the tail.
    blocks: dict[int, dict] = {}
    for k, i in enumerate(idx):
        b = blocks.setdefault(int(i) // block, {"pasted": bool(lab[k]), "alarm": False, "above": False})
        if lab[k] or not tm[k]:
            b["alarm"] |= bool(alarm[k])
            b["above"] |= bool(above[k])
    pb = [b for b in blocks.values() if b["pasted"]]
    cb = [b for b in blocks.values() if not b["pasted"]]
    out["blocks"] = {
        "pasted": len(pb),
        "clean": len(cb),
        "pasted_with_alarm": sum(b["alarm"] for b in pb),
        "clean_with_alarm": sum(b["alarm"] for b in cb),
        "pasted_with_above": sum(b["above"] for b in pb),
        "clean_with_above": sum(b["above"] for b in cb),
    }
    return out


def _quantiles(x: np.ndarray) -> dict | None:
    if x.size == 0:
        return None
    q = np.quantile(x, [0.0, 0.5, 0.9, 0.99, 1.0])
    return {"min": round(float(q[0]), 3), "median": round(float(q[1]), 3), "p90": round(float(q[2]), 3),
            "p99": round(float(q[3]), 3), "max": round(float(q[4]), 3)}  # fmt: skip


def baseline_aurocs(stats: Sequence[tuple[float, float]], labels: Sequence[bool]) -> dict:
    """AUROC of the trivial per-frame statistics (mean brightness, std of the gray frame) on the same split."""
    arr = np.asarray(stats, np.float64)
    lab = np.asarray(labels, bool)
    out = {}
    for k, name in enumerate(("mean_brightness", "std")):
        a = auroc(arr[:, k], lab)
        out[name] = {"auroc": round(a, 4), "two_sided": round(two_sided(a), 4)}
    return out


def _inter(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy


def attribute_false_alarms(frames: Sequence[dict], labels: Sequence[dict]) -> dict:
    """Where and why clean frames go above the threshold, from the ground truth.

    For each clean frame above the threshold: does the alarm box overlap a person (most of the box, or the
    person), what was the registration ``shift`` against the true camera displacement (frame 0 of the clip the
    bundle was calibrated on is the reference: the expected shift is j0 - j), the lighting gain, how many people
    were in view. Also the correlation of the score with those on all clean frames.
    """
    by_frame = {int(e["frame"]): e for e in frames}
    rows = []
    clean_scores, clean_err, clean_people, clean_gain, clean_shift = [], [], [], [], []
    for lab in labels:
        e = by_frame.get(int(lab["frame"]))
        if e is None or lab["pasted"]:
            continue
        shift = e.get("shift")
        exp = lab.get("expected_shift")
        err = None
        if shift is not None and exp is not None:
            err = float(math.hypot(shift[0] - exp[0], shift[1] - exp[1]))
        clean_scores.append(float(e["score"]))
        clean_err.append(err if err is not None else np.nan)
        clean_people.append(len(lab["people"]))
        clean_gain.append(lab["gain"])
        clean_shift.append(math.hypot(*shift) if shift is not None else np.nan)
        if not e.get("above_threshold"):
            continue
        bbox = e.get("bbox")
        on_person = False
        if bbox:
            area = max(1.0, bbox[2] * bbox[3])
            for p in lab["people"]:
                inter = _inter(bbox, p)
                if inter > 0.25 * area or inter > 0.25 * p[2] * p[3]:
                    on_person = True
                    break
        rows.append({"frame": int(lab["frame"]), "score": round(float(e["score"]), 3), "bbox": bbox,
                     "on_person": on_person, "shift": shift, "expected_shift": exp,
                     "shift_error": None if err is None else round(err, 2), "gain": lab["gain"],
                     "people": len(lab["people"])})  # fmt: skip
    s = np.array(clean_scores)
    errs = np.array(clean_err, np.float64)

    def corr(x: np.ndarray) -> float | None:
        ok = np.isfinite(x)
        if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(s[ok]) == 0:
            return None
        return round(float(np.corrcoef(s[ok], x[ok])[0, 1]), 3)

    fin = errs[np.isfinite(errs)]
    shifts = np.array(clean_shift, np.float64)
    shifts = shifts[np.isfinite(shifts)]
    out = {
        "count": len(rows),
        "on_person": sum(r["on_person"] for r in rows),
        "no_box": sum(r["bbox"] is None for r in rows),
        "score_corr": {"shift_error": corr(errs), "people_in_view": corr(np.array(clean_people, np.float64)),
                       "gain": corr(np.array(clean_gain, np.float64))},  # fmt: skip
        "registration_error_px": None if fin.size == 0 else {
            "median": round(float(np.median(fin)), 3), "p90": round(float(np.quantile(fin, 0.9)), 3),
            "max": round(float(fin.max()), 3), "over_2px": int((fin > 2).sum()), "frames": int(fin.size)},
        "shift_px": None if shifts.size == 0 else {
            "median": round(float(np.median(shifts)), 3), "p90": round(float(np.quantile(shifts, 0.9)), 3),
            "max": round(float(shifts.max()), 3)},
        "top": sorted(rows, key=lambda r: -r["score"])[:10],
    }  # fmt: skip
    if rows:
        boxes = [r["bbox"] for r in rows if r["bbox"]]
        if boxes:
            cy = np.array([b[1] + b[3] / 2 for b in boxes])
            cx = np.array([b[0] + b[2] / 2 for b in boxes])
            qs = [0.1, 0.5, 0.9]
            out["box_centre_quantiles"] = {"x": [round(float(v)) for v in np.quantile(cx, qs)],
                                           "y": [round(float(v)) for v in np.quantile(cy, qs)]}  # fmt: skip
    return out


def block_table(frames: Sequence[dict], labels: Sequence[dict], block: int = BLOCK) -> list[dict]:
    """Per block: pasted?, the object (kind, longest side), median and max score, people in view, gain. Shows
    whether an object lifts the score above its neighbouring clean blocks even where the threshold is not met."""
    by_frame = {int(e["frame"]): e for e in frames}
    rows: dict[int, list] = {}
    for lab in labels:
        e = by_frame.get(int(lab["frame"]))
        if e is not None:
            rows.setdefault(int(lab["frame"]) // block, []).append((e, lab))
    out = []
    for b, items in sorted(rows.items()):
        sc = np.array([e["score"] for e, _ in items], np.float64)
        lab0 = items[0][1]
        obj = lab0["object"] if lab0["pasted"] else None
        out.append({"block": b, "pasted": lab0["pasted"], "kind": obj["kind"] if obj else None,
                    "size": max(obj["bbox"][2:]) if obj else None,
                    "median_score": round(float(np.median(sc)), 3), "max_score": round(float(sc.max()), 3),
                    "above": int(sum(bool(e["above_threshold"]) for e, _ in items)),
                    "people": round(float(np.mean([len(lb["people"]) for _, lb in items])), 1),
                    "gain": round(float(np.mean([lb["gain"] for _, lb in items])), 4)})  # fmt: skip
    return out


def block_contrast(table: Sequence[dict]) -> dict | None:
    """Median score of each pasted block minus the mean of the medians of the clean blocks on either side: the
    object's lift over the scene at that time (positive: the object raises the score, threshold or not)."""
    lifts = []
    for k, row in enumerate(table):
        if not row["pasted"]:
            continue
        nb = [table[i]["median_score"] for i in (k - 1, k + 1) if 0 <= i < len(table) and not table[i]["pasted"]]
        if nb:
            lifts.append(row["median_score"] - float(np.mean(nb)))
    if not lifts:
        return None
    arr = np.array(lifts)
    return {"median": round(float(np.median(arr)), 3), "min": round(float(arr.min()), 3),
            "max": round(float(arr.max()), 3), "positive": int((arr > 0).sum()), "blocks": len(lifts)}  # fmt: skip


def _box_mask(shape: tuple[int, int], boxes: Iterable[Sequence[int]], grow: int = 0) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x, y, w, h in boxes:
        mask[max(0, y - grow) : max(0, y + h + grow), max(0, x - grow) : max(0, x + w + grow)] = True
    return mask


def picked_precision(bundle: Path, precision: str) -> str:
    """The precision the CLI runs the anomaly graph at: ``precision`` itself, or for ``auto`` what
    ``--device auto`` picks on this machine (its cached choice)."""
    if precision != "auto":
        return precision
    from edge_runtime.autodevice import choose

    return choose(str(bundle), "anomaly", "auto").precision


def map_diagnostics(bundle: Path, video: Path, labels: Sequence[dict], every: int = 4,
                    precision: str = "fp32") -> dict:  # fmt: skip
    """Where the anomaly map peaks, through the runtime's Python API on every ``every``-th frame of ``video`` (each
    scored against the frame before it, as a stream is):
    on a person, on the object, or elsewhere; and what the frame score would be with people masked out by their
    true boxes (an oracle: the upside of treating walking people as normal), as AUROC on those frames."""
    try:
        from edge_runtime.anomaly import AnomalyScorer

        scorer = AnomalyScorer(str(bundle), precision=precision)
    except Exception as exc:  # the runtime's API is not this benchmark's contract: report, do not fail
        return {"error": f"{type(exc).__name__}: {exc}"}
    cap = cv2.VideoCapture(str(video))
    rows = []
    k = 0
    before = None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if k % every == 0 and k < len(labels):
            lab = labels[k]
            # as `edgeae score` scores a video: against the frame before (the motion term, when calibrated on one)
            prev = scorer.analyse(before) if before is not None else None
            if prev is not None:
                scorer.finish(prev)
            res = scorer.finish(scorer.analyse(frame), prev)
            amap = np.asarray(res.map, np.float32)
            people = _box_mask(amap.shape, lab["people"], 4)
            obj = _box_mask(amap.shape, [lab["object"]["footprint"]], 4) if lab["pasted"] else np.zeros_like(people)
            y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
            where = "object" if obj[y, x] else "person" if people[y, x] else "elsewhere"
            rest = amap[~people & ~obj]
            rows.append({"frame": k, "pasted": lab["pasted"], "score": float(res.score), "peak_on": where,
                         "no_people": float(amap[~people].max()) if (~people).any() else float("nan"),
                         "object_peak": float(amap[obj].max()) if obj.any() else None,
                         "elsewhere_peak": float(rest.max()) if rest.size else None})  # fmt: skip
        before = frame
        k += 1
    cap.release()
    if not rows:
        return {"error": "no frames decoded"}
    clean = [r for r in rows if not r["pasted"]]
    pasted = [r for r in rows if r["pasted"]]
    lab = np.array([r["pasted"] for r in rows])
    out: dict = {"frames": len(rows), "every": every,
                 "clean_peak_on": {w: sum(r["peak_on"] == w for r in clean) for w in ("person", "elsewhere")},
                 "pasted_peak_on": {w: sum(r["peak_on"] == w for r in pasted) for w in ("object", "person",
                                                                                        "elsewhere")}}  # fmt: skip
    if lab.any() and (~lab).any():
        out["auroc_score_on_these_frames"] = round(auroc(np.array([r["score"] for r in rows]), lab), 4)
        out["auroc_people_masked_oracle"] = round(auroc(np.array([r["no_people"] for r in rows]), lab), 4)
    margins = [r["object_peak"] - r["elsewhere_peak"] for r in pasted
               if r["object_peak"] is not None and r["elsewhere_peak"] is not None]  # fmt: skip
    if margins:
        out["object_minus_elsewhere_peak"] = _quantiles(np.array(margins))
    out["clean_peak_no_people"] = _quantiles(np.array([r["no_people"] for r in clean]))
    out["pasted_object_peak"] = _quantiles(np.array([r["object_peak"] for r in pasted if r["object_peak"] is not None]))
    return out


def detection_boxes(frames: Sequence[dict], labels: Sequence[dict]) -> dict:
    """On pasted frames above the threshold: how often the alarm box covers the object (centre inside)."""
    by_frame = {int(e["frame"]): e for e in frames}
    hit = total = 0
    for lab in labels:
        e = by_frame.get(int(lab["frame"]))
        if e is None or not lab["pasted"] or not e.get("above_threshold") or not e.get("bbox"):
            continue
        total += 1
        bx, by_, bw, bh = lab["object"]["bbox"]
        ox, oy = bx + bw / 2, by_ + bh / 2
        x, y, w, h = e["bbox"]
        hit += int(x <= ox <= x + w and y <= oy <= y + h)
    return {"above_with_box": total, "box_on_object": hit}


# ------------------------------------------------------------------------------------------------------------
# Running the CLI


def edgeae_argv() -> list[str]:
    """The edgeae CLI of this checkout (the module, so a copy of the repository runs its own runtime)."""
    return [sys.executable, "-m", "edge_runtime.cli"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cli_help(*args: str) -> str:
    res = subprocess.run([*edgeae_argv(), *args, "--help"], capture_output=True, text=True, env=_env(), cwd=REPO)
    return res.stdout + res.stderr


def has_option(help_text: str, option: str) -> bool:
    return re.search(rf"(^|[\s,/]){re.escape(option)}([\s,/=]|$)", help_text, re.M) is not None


def calibrate_plan(help_text: str, model: str, source: str, out: str) -> tuple[list[str], bool]:
    """(edgeae calibrate arguments, copy the bundle to ``out`` first?) for the runtime's calibrate options:
    ``--out`` when offered (the bundle stays untouched); otherwise a copy calibrated in place (``--in-place``
    when that flag exists)."""
    if has_option(help_text, "--out"):
        return ["calibrate", model, "--source", source, "--out", out], False
    args = ["calibrate", out, "--source", source]
    if has_option(help_text, "--in-place"):
        args.append("--in-place")
    return args, True


def run_cli(args: Sequence[str], log: Path, commands: list) -> tuple[int, str, float]:
    """Run ``edgeae ARGS``; stdout and stderr to ``log``; returns (exit code, stdout, seconds)."""
    t0 = time.perf_counter()
    res = subprocess.run([*edgeae_argv(), *args], capture_output=True, text=True, env=_env(), cwd=REPO)
    dt = time.perf_counter() - t0
    log.write_text(f"$ edgeae {' '.join(args)}\n# exit {res.returncode}, {dt:.1f} s\n--- stdout\n{res.stdout}\n"
                   f"--- stderr\n{res.stderr}")  # fmt: skip
    commands.append({"command": "edgeae " + " ".join(args), "exit": res.returncode, "seconds": round(dt, 1)})
    print(f"  edgeae {' '.join(args)}  -> exit {res.returncode} ({dt:.0f} s)", flush=True)
    return res.returncode, res.stdout, dt


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if isinstance(v, dict):
            return v
    return None


# ------------------------------------------------------------------------------------------------------------
# The benchmark


def _gray_stats(img: np.ndarray) -> tuple[float, float]:
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return float(g.mean()), float(g.std())


def _versions(model_dir: Path) -> dict:
    import onnxruntime

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO)
        return r.stdout.strip()

    fp32 = model_dir / "anomaly.fp32.onnx"
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "commit": git("rev-parse", "HEAD"),
        "runtime_files_modified": [
            ln[3:] for ln in git("status", "--porcelain").splitlines() if ln[3:].startswith("edge_runtime/")
        ],  # fmt: skip
        "model": str(model_dir),
        "model_fp32_sha256": hashlib.sha256(fp32.read_bytes()).hexdigest() if fp32.is_file() else None,
    }


def _stream_clip(scene: StreetScene, times: Sequence[float], pastes: dict[int, Paste], stream: int,
                 gain_fn: Callable[[float], float] | None, labels: list, stats: list, keep: dict,
                 index_offset: int = 0) -> Iterator[np.ndarray]:  # fmt: skip
    for k, t in enumerate(times):
        img, lab = scene.render(t, index_offset + k, paste=pastes.get(k), stream=stream,
                                gain=None if gain_fn is None else gain_fn(t))  # fmt: skip
        lab["frame"] = k
        labels.append(lab)
        stats.append(_gray_stats(img))
        if k in keep:
            keep[k] = img
        yield img


def _calibration_reference_jitter(scene: StreetScene, calib_times: Sequence[float]) -> np.ndarray:
    """The camera displacement of the first calibration frame: per-location calibration registers every frame to
    the first frame it reads (edge_runtime/calibration.py), so the expected shift of a frame is j0 - j."""
    return scene.jitter(calib_times[0])


def run(args: argparse.Namespace) -> dict:
    t_all = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    model = (Path(args.models) / args.model_name).resolve()
    if not (model / "manifest.json").is_file():
        raise SystemExit(f"{model}: no anomaly bundle (manifest.json)")
    photos = load_photos(Path(args.data), args.background, args.seed)
    fps, n_total, n_cal = args.fps, args.frames, args.calib_frames
    if n_total < n_cal + 2 * BLOCK:
        raise SystemExit(f"--frames must be at least --calib-frames + {2 * BLOCK}")
    n_test = n_total - n_cal
    duration = n_total / fps
    cfg = SceneConfig(rate=args.people_rate)
    scene = StreetScene(photos.background, photos.people, photos.objects, seed=args.seed, t_end=duration, config=cfg)
    commands: list = []
    result: dict = {
        "benchmark": "street_bench (issue 16)",
        "seed": args.seed,
        "config": {
            "size": list(SIZE),
            "fps": fps,
            "frames": n_total,
            "calib_frames": n_cal,
            "test_frames": n_test,
            "block": BLOCK,
            "noise_sigma": round(scene.noise_sigma, 3),
            "jpeg_quality": scene.jpeg_quality,
            "lighting_drift": round(scene.drift, 4),
            "jitter_std_px": scene.cfg.jitter_std,
            "bumps": len(scene.bumps),
            "walkers": len(scene.walkers),
            "photos": photos.names,
            "precision": args.precision,
            "people_rate": args.people_rate,
        },  # fmt: skip
        "versions": _versions(model),
        "commands": commands,
    }
    # 1. The clips: the first n_cal frames, then the test frames with objects in odd blocks.
    t0 = time.perf_counter()
    times = [k / fps for k in range(n_total)]
    calib_labels: list = []
    calib_stats: list = []
    keep_cal: dict = {0: None, n_cal // 2: None}
    write_mkv(out / "calib.mkv", _stream_clip(scene, times[:n_cal], {}, 0, None, calib_labels, calib_stats,
                                              keep_cal), fps)  # fmt: skip
    pastes = test_schedule(scene, n_test, args.seed)
    test_labels: list = []
    test_stats: list = []
    first_pasted = min(pastes) if pastes else 0
    smallest = min(pastes, key=lambda i: max(pastes[i].w, pastes[i].h)) if pastes else 0
    smallest = smallest - smallest % BLOCK + 4  # a frame inside that block
    keep_test: dict = {0: None, first_pasted + 4: None, smallest: None}
    write_mkv(out / "test.mkv", _stream_clip(scene, times[n_cal:], pastes, 0, None, test_labels, test_stats,
                                             keep_test, index_offset=n_cal), fps)  # fmt: skip
    j0 = _calibration_reference_jitter(scene, times[:n_cal])
    for lab in calib_labels + test_labels:
        lab["expected_shift"] = [round(float(j0[0] - lab["jitter"][0]), 3), round(float(j0[1] - lab["jitter"][1]), 3)]
    people = np.array([len(lab["people"]) for lab in calib_labels + test_labels])
    vis = np.array([lab["object"]["visible"] for lab in test_labels if lab["pasted"]])
    result["scene"] = {
        "people_in_view": {"mean": round(float(people.mean()), 2), "min": int(people.min()), "max": int(people.max())},
        "object_visible_fraction": {"median": round(float(np.median(vis)), 3), "under_half": int((vis < 0.5).sum())},
        "generate_s": round(time.perf_counter() - t0, 1),
    }
    (out / "labels.json").write_text(json.dumps({"calib": calib_labels, "test": test_labels}) + "\n")
    print(f"generated {n_total} frames in {result['scene']['generate_s']} s; people in view "
          f"{result['scene']['people_in_view']}", flush=True)  # fmt: skip

    # 2. Calibrate with the CLI defaults on the first n_cal frames, then score the test clip.
    cal_dir = out / "calibrated"
    if cal_dir.exists():
        shutil.rmtree(cal_dir)
    cal_args, copy_first = calibrate_plan(cli_help("calibrate"), str(model), str(out / "calib.mkv"), str(cal_dir))
    if copy_first:
        shutil.copytree(model, cal_dir)
    if args.precision != "auto":
        cal_args += ["--precision", args.precision]
    rc, stdout, _ = run_cli(cal_args, logs / "calibrate.log", commands)
    if rc != 0:
        raise SystemExit(f"edgeae calibrate failed (exit {rc}); see {logs / 'calibrate.log'}")
    result["calibration"] = {"copied_bundle_first": copy_first, "summary": _last_json(stdout)}
    result["config"]["precision_run"] = picked_precision(cal_dir, args.precision)
    manifest = json.loads((cal_dir / "manifest.json").read_text())
    result["calibration"]["stored"] = manifest.get("calibration")
    ev = out / "events_test.jsonl"
    ev.unlink(missing_ok=True)
    sc_args = ["score", str(cal_dir), str(out / "test.mkv"), "--events", str(ev)]
    if args.precision != "auto":
        sc_args += ["--precision", args.precision]
    rc, stdout, dt = run_cli(sc_args, logs / "score_test.log", commands)
    start, frames, errors = read_events(ev)
    if not frames:
        raise SystemExit(f"edgeae score wrote no frame lines (exit {rc}); see {logs / 'score_test.log'}")
    labels = [lab["pasted"] for lab in test_labels]
    metrics = frame_metrics(frames, labels)
    metrics["threshold"] = start.get("threshold", frames[0].get("threshold"))
    metrics["exit"] = rc
    metrics["errors"] = len(errors)
    metrics["score_s"] = round(dt, 1)
    metrics["baselines"] = baseline_aurocs(test_stats, labels)
    metrics["false_alarms"] = attribute_false_alarms(frames, test_labels)
    metrics["detection_boxes"] = detection_boxes(frames, test_labels)
    by_frame = {int(e["frame"]): e for e in frames}
    det_visible = [bool(by_frame[lab["frame"]]["above_threshold"]) for lab in test_labels
                   if lab["pasted"] and lab["object"]["visible"] >= 0.5 and lab["frame"] in by_frame]  # fmt: skip
    metrics["detection_rate_visible"] = _rate(np.array(det_visible, bool))
    metrics["per_kind_detection"] = {}
    for kind in OBJECT_KINDS:
        sel = [by_frame[lab["frame"]]["above_threshold"] for lab in test_labels
               if lab["pasted"] and lab["object"]["kind"] == kind and lab["frame"] in by_frame]  # fmt: skip
        metrics["per_kind_detection"][kind] = _rate(np.array(sel, bool))
    sizes = {"30-50": (0, 50), "50-70": (50, 70), "70-90": (70, 1000)}
    metrics["per_size_detection"] = {}
    for name, (lo, hi) in sizes.items():
        sel = [by_frame[lab["frame"]]["above_threshold"] for lab in test_labels if lab["pasted"]
               and lo <= max(lab["object"]["bbox"][2:]) < hi and lab["frame"] in by_frame]  # fmt: skip
        metrics["per_size_detection"][name] = _rate(np.array(sel, bool))
    metrics["block_table"] = block_table(frames, test_labels)
    metrics["block_lift"] = block_contrast(metrics["block_table"])
    if args.diagnose:
        t0 = time.perf_counter()
        metrics["map_diagnostics"] = map_diagnostics(cal_dir, out / "test.mkv", test_labels,
                                                     precision=picked_precision(cal_dir, args.precision))  # fmt: skip
        metrics["map_diagnostics"]["seconds"] = round(time.perf_counter() - t0, 1)
    result["busy_scene"] = metrics
    if has_option(cli_help("run"), "--adapt"):  # the same clip through the live loop with adaptation
        ev = out / "events_test_run_adapt.jsonl"
        ev.unlink(missing_ok=True)
        stats_path = out / "test_run_adapt_stats.json"
        stats_path.unlink(missing_ok=True)
        a = ["run", str(cal_dir), "--source", str(out / "test.mkv"), "--adapt", "--stats", str(stats_path),
             "--events", str(ev)]  # fmt: skip
        if args.precision != "auto":
            a += ["--precision", args.precision]
        rc, _, dt = run_cli(a, logs / "run_adapt_test.log", commands)
        _, frames_a, errors_a = read_events(ev) if ev.exists() else ({}, [], [])
        if frames_a:
            ma = frame_metrics(frames_a, labels)
            ma["exit"], ma["seconds"], ma["errors"] = rc, round(dt, 1), len(errors_a)
            if stats_path.is_file():
                ma["adapt_stats"] = _adapt_stats(json.loads(stats_path.read_text()))
            result["busy_scene_run_adapt"] = ma
        else:
            result["busy_scene_run_adapt"] = {"exit": rc, "error": "no frame lines"}
    print(
        f"busy scene: AUROC {metrics['auroc']:.3f}, false alarms {100 * metrics['false_alarm_rate']:.1f} %, "
        f"detections {100 * metrics['detection_rate']:.1f} %, threshold {metrics['threshold']}",
        flush=True,
    )

    # 3. Lighting ramps of +-30 % over 10 minutes, one frame every 2 s.
    keep_ramp: dict = {}
    if args.ramp:
        result["ramp"] = _ramp(args, photos, cal_dir, out, logs, commands, keep_ramp)

    # 4. The synthetic fixed-camera benchmark.
    if args.synthetic:
        result["synthetic"] = _synthetic(model, out, logs, commands, args.synthetic_args)

    # 5. The contact sheet.
    _contact_sheet(out / "street_frames.png", keep_cal, keep_test, calib_labels, test_labels, keep_ramp)
    result["seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "street_results.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (out / "street_results.md").write_text(format_markdown(result))
    return result


def _ramp(args, photos: Photos, cal_dir: Path, out: Path, logs: Path, commands: list, keep: dict) -> dict:
    """Scenario 2: the lighting ramps (+30 %, -30 %), scored with the calibrated bundle."""
    span = RAMP_FRAMES * RAMP_EVERY_S
    times = [k * RAMP_EVERY_S for k in range(RAMP_FRAMES)]
    adapt = has_option(cli_help("run"), "--adapt")
    res: dict = {"frames": RAMP_FRAMES, "every_s": RAMP_EVERY_S, "blocks": [[b, b + BLOCK] for b in RAMP_BLOCKS],
                 "adapt_available": adapt}  # fmt: skip
    for sign, name in ((1, "up"), (-1, "down")):
        # Same camera and scene as the calibrated clip (its photograph, noise, JPEG): another stretch of time,
        # other people; the ramp starts at the lighting the bundle was calibrated at.
        scene = StreetScene(photos.background, photos.people, photos.objects, seed=args.seed, t_end=span,
                            config=SceneConfig(rate=args.people_rate))  # fmt: skip
        scene.walkers = scene._walkers(np.random.default_rng([args.seed, 11, sign + 1]), photos.people, -40.0, span)
        rng = np.random.default_rng([args.seed, 5, sign + 1])
        pastes: dict[int, Paste] = {}
        for bi, b in enumerate(RAMP_BLOCKS):
            p = scene.make_paste(rng, OBJECT_KINDS[bi % len(OBJECT_KINDS)])
            for i in range(b, b + BLOCK):
                pastes[i] = p
        labels: list = []
        stats: list = []
        kp: dict = {0: None, RAMP_BLOCKS[-1] + 2: None}
        path = out / f"ramp_{name}.mkv"

        def gain_fn(t: float, sign=sign) -> float:
            return 1.0 + sign * RAMP_CHANGE * t / span

        write_mkv(path, _stream_clip(scene, times, pastes, 100 + sign, gain_fn, labels, stats, kp),
                  1.0 / RAMP_EVERY_S)  # fmt: skip
        keep[name] = (kp, labels)
        lab = [lb["pasted"] for lb in labels]
        entry: dict = {}
        runs = [("score", ["score", str(cal_dir), str(path)])]
        if adapt:
            stats_path = out / f"ramp_{name}_run_adapt_stats.json"
            stats_path.unlink(missing_ok=True)
            runs.append(
                ("run_adapt", ["run", str(cal_dir), "--source", str(path), "--adapt", "--stats", str(stats_path)])
            )
        for key, a in runs:
            ev = out / f"events_ramp_{name}_{key}.jsonl"
            ev.unlink(missing_ok=True)
            a = a + ["--events", str(ev)]
            if args.precision != "auto":
                a += ["--precision", args.precision]
            rc, _, dt = run_cli(a, logs / f"ramp_{name}_{key}.log", commands)
            start, frames, errors = read_events(ev) if ev.exists() else ({}, [], [])
            if not frames:
                entry[key] = {"exit": rc, "error": "no frame lines"}
                continue
            m = frame_metrics(frames, lab)
            m["exit"], m["seconds"], m["errors"] = rc, round(dt, 1), len(errors)
            run_stats = out / f"ramp_{name}_run_adapt_stats.json"
            if key == "run_adapt" and run_stats.is_file():
                st = json.loads(run_stats.read_text())
                m["adapt_stats"] = _adapt_stats(st)
            m["threshold"] = start.get("threshold")
            by_frame = {int(e["frame"]): e for e in frames}
            thirds = {}
            for k3 in range(3):
                lo, hi = k3 * RAMP_FRAMES // 3, (k3 + 1) * RAMP_FRAMES // 3
                sel = [by_frame[i]["above_threshold"] for i in range(lo, hi) if i in by_frame and not lab[i]]
                thirds[f"frames_{lo}_{hi}"] = {"gain": round(1 + sign * RAMP_CHANGE * (lo + hi) / 2 / RAMP_FRAMES, 3),
                                               "false_alarm_rate": _rate(np.array(sel, bool))}  # fmt: skip
            m["false_alarms_by_third"] = thirds
            m["per_block_detection"] = [_rate(np.array([by_frame[i]["above_threshold"] for i in range(b, b + BLOCK)
                                                         if i in by_frame], bool)) for b in RAMP_BLOCKS]  # fmt: skip
            entry[key] = m
        entry["baselines"] = baseline_aurocs(stats, lab)
        res[name] = entry
        s = entry.get("score", {})
        if "false_alarm_rate" in s:
            print(f"ramp {name}: false alarms {100 * s['false_alarm_rate']:.1f} %, detections "
                  f"{100 * s['detection_rate']:.1f} %", flush=True)  # fmt: skip
    return res


def _adapt_stats(stats: dict) -> dict:
    """The adaptation counters of a run's --stats (keys naming adapt or drift; their layout is the runtime's)."""
    return {k: v for k, v in stats.items() if "adapt" in k or "drift" in k}


def _synthetic(model: Path, out: Path, logs: Path, commands: list, extra: Sequence[str]) -> dict:
    args = ["-m", "benchmarks.anomaly_bench", "--model", str(model), "--json", str(out / "anomaly_bench.json"),
            *extra]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(), cwd=REPO)
    dt = time.perf_counter() - t0
    (logs / "anomaly_bench.log").write_text(res.stdout + "\n" + res.stderr)
    commands.append({"command": "python " + " ".join(args), "exit": res.returncode, "seconds": round(dt, 1)})
    print(f"  python {' '.join(args)} -> exit {res.returncode} ({dt:.0f} s)", flush=True)
    if res.returncode != 0 or not (out / "anomaly_bench.json").is_file():
        return {"exit": res.returncode, "error": res.stderr[-2000:]}
    r = json.loads((out / "anomaly_bench.json").read_text())
    return {"exit": 0, "seconds": round(dt, 1), "config": r["config"], "mean": r["mean"],
            "per_scene_image_auroc": {k: v["local"]["image_auroc"] for k, v in r["scenes"].items()},
            "false_alarms": sum(v["local"]["false_alarms"] for v in r["scenes"].values()),
            "detected": sum(v["local"]["detected"] for v in r["scenes"].values())}  # fmt: skip


def _tile(img: np.ndarray, text: str, box: Sequence[int] | None = None) -> np.ndarray:
    img = img.copy()
    if box is not None:
        x, y, w, h = box
        cv2.rectangle(img, (x - 3, y - 3), (x + w + 3, y + h + 3), (0, 255, 255), 1, cv2.LINE_AA)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    cv2.rectangle(img, (0, 0), (tw + 8, th + base + 8), (0, 0, 0), -1)
    cv2.putText(img, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def _labelled(img: np.ndarray, o: dict, what: str) -> np.ndarray:
    """The frame with the object's label box and an enlarged inset of it (on the side away from the object)."""
    x, y, w, h = o["bbox"]
    pad = max(6, max(w, h) // 2)
    x0, y0 = max(0, x - pad), max(0, y - pad)
    crop = img[y0 : y + h + pad, x0 : x + w + pad]
    f = max(1, min(3, (img.shape[0] - 30) // max(1, crop.shape[0]), (img.shape[1] // 2) // max(1, crop.shape[1])))
    big = cv2.resize(crop, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST)
    out = _tile(img, f"{what}: label box; inset x{f}: {o['kind']} {w}x{h} px", o["bbox"])
    inset_x = 0 if x + w / 2 > img.shape[1] / 2 else img.shape[1] - big.shape[1]
    out[img.shape[0] - big.shape[0] :, inset_x : inset_x + big.shape[1]] = big
    cv2.rectangle(out, (inset_x, img.shape[0] - big.shape[0]), (inset_x + big.shape[1] - 1, img.shape[0] - 1),
                  (255, 255, 255), 1)  # fmt: skip
    return out


def _contact_sheet(path: Path, keep_cal: dict, keep_test: dict, calib_labels: list, test_labels: list,
                   keep_ramp: dict) -> None:  # fmt: skip
    tiles = []
    for k, img in keep_cal.items():
        if img is not None:
            tiles.append(_tile(img, f"calibration frame {k}: {len(calib_labels[k]['people'])} people"))
    shown_plain = False
    for k, img in keep_test.items():
        if img is None:
            continue
        lab = test_labels[k]
        if lab["pasted"]:
            o = lab["object"]
            if not shown_plain:  # the first object as the model sees it, without marks
                tiles.append(_tile(img, f"test frame {k}: pasted {o['kind']} (as scored)"))
                shown_plain = True
            tiles.append(_labelled(img, o, f"test frame {k}"))
        else:
            tiles.append(_tile(img, f"test frame {k}: clean, {len(lab['people'])} people"))
    for name, (kp, labels) in keep_ramp.items():
        for k, img in sorted(kp.items()):
            if img is not None:
                lab = labels[k]
                what = f"{lab['object']['kind']} pasted" if lab["pasted"] else "clean"
                tiles.append(_tile(img, f"ramp {name} t={lab['time']:.0f} s gain {lab['gain']:.2f}: {what}",
                                   lab["object"]["bbox"] if lab["pasted"] else None))  # fmt: skip
    if not tiles:
        return
    while len(tiles) % 2:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + 2]) for i in range(0, len(tiles), 2)]
    cv2.imwrite(str(path), np.vstack(rows))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None, nd: int = 3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def _adapt_line(m: dict | None) -> list[str]:
    if not m or "auroc" not in m:
        return []
    return [f"The same test clip through `edgeae run --adapt`: AUROC {_num(m['auroc'])}, false alarms "
            f"{_pct(m['false_alarm_rate'])}, detections {_pct(m['detection_rate'])}; alarm level "
            f"{_pct(m['alarm_false_rate'])} / {_pct(m['alarm_detection_rate'])}."]  # fmt: skip


def format_markdown(r: dict) -> str:
    b = r["busy_scene"]
    c = r["config"]
    lines = [
        f"Busy scene: {c['size'][0]}x{c['size'][1]}, {c['fps']:g} frames/s, seed {r['seed']}, {c['frames']} frames "
        f"(calibration {c['calib_frames']}, test {c['test_frames']}: {b['clean']} clean, {b['pasted']} with an "
        f"object); people in view {r['scene']['people_in_view']['mean']} on average "
        f"({r['scene']['people_in_view']['min']}-{r['scene']['people_in_view']['max']}); threshold "
        f"{_num(b['threshold'], 2)}; precision {c['precision']} (ran {c.get('precision_run', c['precision'])}).",
        "",
        "| metric | per frame (`above_threshold`) | alarm (hysteresis) |",
        "| --- | ---: | ---: |",
        f"| AUROC of `score` | {_num(b['auroc'])} | |",
        f"| false alarms (clean frames) | {_pct(b['false_alarm_rate'])} | {_pct(b['alarm_false_rate'])} "
        f"({_pct(b['alarm_false_rate_excl_tail'])} without the 3-frame tail) |",
        f"| detections (pasted frames) | {_pct(b['detection_rate'])} | {_pct(b['alarm_detection_rate'])} |",
        f"| blocks: pasted with alarm / clean with alarm | {b['blocks']['pasted_with_above']}/{b['blocks']['pasted']}"
        f" / {b['blocks']['clean_with_above']}/{b['blocks']['clean']} | {b['blocks']['pasted_with_alarm']}/"
        f"{b['blocks']['pasted']} / {b['blocks']['clean_with_alarm']}/{b['blocks']['clean']} |",
        f"| trivial baselines: AUROC of frame mean / std | {_num(b['baselines']['mean_brightness']['auroc'])} / "
        f"{_num(b['baselines']['std']['auroc'])} | |",
        "",
        f"Score on clean frames {b['score_clean']}; on pasted frames {b['score_pasted']}.",
        *_adapt_line(r.get("busy_scene_run_adapt")),
        f"False alarms: {b['false_alarms']['count']} clean frames above the threshold, "
        f"{b['false_alarms']['on_person']} with the alarm box on a person; registration error (px, against the "
        f"true camera shake) {b['false_alarms']['registration_error_px']}.",
    ]
    if "ramp" in r:
        lines += [
            "",
            "| lighting ramp (300 frames, 2 s apart) | false alarms | detections | alarm false | alarm detections "
            "| blocks detected (alarm) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in ("up", "down"):
            for key in ("score", "run_adapt"):
                m = r["ramp"].get(name, {}).get(key)
                if not m or "auroc" not in m:
                    continue
                sign = "+" if name == "up" else "-"
                lines.append(f"| {sign}30 %, `{'edgeae score' if key == 'score' else 'edgeae run --adapt'}` | "
                             f"{_pct(m['false_alarm_rate'])} | {_pct(m['detection_rate'])} | "
                             f"{_pct(m['alarm_false_rate'])} | {_pct(m['alarm_detection_rate'])} | "
                             f"{m['blocks']['pasted_with_alarm']}/{m['blocks']['pasted']} |")  # fmt: skip
        if not r["ramp"].get("adapt_available"):
            lines.append("\n`edgeae run --adapt`: not offered by this runtime (`edgeae run --help`), not measured.")
    s = r.get("synthetic")
    if s and "mean" in s:
        loc = s["mean"]["local"]
        lines += [
            "",
            f"Synthetic fixed-camera benchmark (benchmarks/anomaly_bench.py, {s['config']}): mean image AUROC "
            f"{loc['image_auroc']:.3f}, pixel {loc['pixel_auroc']:.3f}.",
        ]
    lines += ["", f"Benchmark run time {r['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.street_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="models", help="folder of model bundles")
    parser.add_argument("--model-name", default="anomaly", help="the anomaly bundle under --models")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="photographs (shared/data)")
    parser.add_argument("--background", default=DEFAULT_BACKGROUND, help="background photograph, under --data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=600, help="frames of the busy clip (calibration + test)")
    parser.add_argument("--calib-frames", type=int, default=CALIB_FRAMES)
    parser.add_argument("--fps", type=float, default=FPS)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "int8"),
                        help="the CLI's --precision; auto (its default) lets `--device auto` pick, and the JSON "
                        "records what it picked")  # fmt: skip
    parser.add_argument("--people-rate", type=float, default=SceneConfig.rate,
                        help="people entering per second (0: an empty plaza, for an ablation)")  # fmt: skip
    parser.add_argument("--no-diagnose", dest="diagnose", action="store_false",
                        help="skip the map diagnostics (the runtime's Python API on every 4th test frame)")  # fmt: skip
    parser.add_argument("--no-ramp", dest="ramp", action="store_false", help="skip the lighting-ramp scenario")
    parser.add_argument("--no-synthetic", dest="synthetic", action="store_false",
                        help="skip the synthetic fixed-camera benchmark")  # fmt: skip
    parser.add_argument("--synthetic-args", nargs=argparse.REMAINDER, default=[],
                        help="extra arguments for benchmarks.anomaly_bench (last on the line)")  # fmt: skip
    args = parser.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"{args.data}: no such data folder (pass --data)", file=sys.stderr)
        return 2
    result = run(args)
    print(format_markdown(result))
    print(f"wrote {Path(args.out) / 'street_results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
