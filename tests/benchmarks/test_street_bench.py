"""benchmarks/street_bench.py: the busy-scene generator and the metrics, on tiny frames and hand-made events.

No test needs ../shared/data or models/: the scene is built from synthetic pictures.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from benchmarks import street_bench as sb

SMALL = sb.SceneConfig(size=(160, 90), rate=2.0, jpeg_quality=None, bump_every_s=1.0)


def _pictures(seed: int = 0):
    rng = np.random.default_rng(seed)
    bg = cv2.resize(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8), (200, 120), interpolation=cv2.INTER_CUBIC)
    bg = cv2.add(bg, rng.integers(0, 30, bg.shape, dtype=np.uint8))  # some fine texture
    people = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(3)]
    objects = [cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (0, 0), 2) for _ in range(2)]
    return bg, people, objects


def _scene(seed: int = 0, config: sb.SceneConfig = SMALL, t_end: float = 4.0) -> sb.StreetScene:
    bg, people, objects = _pictures()
    return sb.StreetScene(bg, people, objects, seed=seed, t_end=t_end, config=config)


# ------------------------------------------------------------------------------------------------- generator


def test_same_seed_gives_the_same_frames_and_labels():
    a, b, c = _scene(0), _scene(0), _scene(1)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    for k, t in enumerate((0.0, 1.3, 3.9)):
        pa, pb = a.make_paste(rng_a), b.make_paste(rng_b)
        fa, la = a.render(t, k, paste=pa)
        fb, lb = b.render(t, k, paste=pb)
        assert fa.shape == (90, 160, 3) and fa.dtype == np.uint8
        assert np.array_equal(fa, fb)
        assert json.dumps(la) == json.dumps(lb)
        fc, _ = c.render(t, k)
        assert not np.array_equal(fa, fc)


def test_frames_change_over_time_and_people_walk():
    sc = _scene(0)
    f0, l0 = sc.render(1.0, 0)
    f1, l1 = sc.render(1.5, 1)
    assert l0["people"] and l1["people"]  # busy: people in view
    assert l0["people"] != l1["people"]  # and they move
    assert float(np.abs(f0.astype(int) - f1.astype(int)).mean()) > 0.5


def test_scene_is_busy_at_the_default_size():
    bg, people, objects = _pictures()
    cfg = sb.SceneConfig(jpeg_quality=None)
    sc = sb.StreetScene(bg, people, objects, seed=3, t_end=60.0, config=cfg)
    counts = [sum(sc.walker_state(w, t) is not None for w in sc.walkers) for t in np.arange(0, 60, 5.0)]
    assert min(counts) >= 2 and np.mean(counts) >= 4  # "several at any time"


def test_objects_land_where_the_labels_say():
    sc = _scene(2)
    rng = np.random.default_rng(0)
    for k, kind in enumerate(sb.OBJECT_KINDS * 2):
        p = sc.make_paste(rng, kind)
        t = 0.4 * k
        with_obj, lab = sc.render(t, k, paste=p)
        without, lab0 = sc.render(t, k)
        assert lab["pasted"] and not lab0["pasted"] and lab["object"]["kind"] == kind
        changed = np.abs(with_obj.astype(int) - without.astype(int)).max(axis=2) > 0
        x, y, w, h = lab["object"]["footprint"]
        inside = np.zeros_like(changed)
        inside[max(0, y) : y + h, max(0, x) : x + w] = True
        assert changed.any()
        assert not (changed & ~inside).any(), "the object changed pixels outside its labelled footprint"
        bx, by, bw, bh = lab["object"]["bbox"]
        body = changed[max(0, by) : by + bh, max(0, bx) : bx + bw]
        if lab["object"]["visible"] > 0.95:
            assert body.mean() > 0.4, "the labelled body box is mostly unchanged"
        assert 0.0 <= lab["object"]["visible"] <= 1.0


def test_occluded_objects_report_less_visibility():
    bg, people, objects = _pictures()
    cfg = sb.SceneConfig(size=(160, 90), rate=6.0, jpeg_quality=None)  # crowded: people pass in front
    sc = sb.StreetScene(bg, people, objects, seed=4, t_end=6.0, config=cfg)
    p = sc.make_paste(np.random.default_rng(1), "box")
    vis = [sc.render(t, k, paste=p)[1]["object"]["visible"] for k, t in enumerate(np.arange(0, 6, 0.25))]
    assert max(vis) > 0.9 and min(vis) < 0.9


def test_object_sizes_follow_the_protocol():
    bg, people, objects = _pictures()
    sc = sb.StreetScene(bg, people, objects, seed=0, t_end=1.0)  # 640x360
    rng = np.random.default_rng(0)
    for _ in range(40):
        p = sc.make_paste(rng)
        assert 29 <= max(p.w, p.h) <= 91
        assert sc.cfg.ground[0] * sc.h <= p.y <= sc.h
        assert p.w / 2 <= p.x <= sc.w - p.w / 2


def test_test_schedule_alternates_blocks_with_one_object_each():
    sc = _scene(0)
    sched = sb.test_schedule(sc, 45, seed=0)
    assert sorted(sched) == list(range(10, 20)) + list(range(30, 40))
    assert all(sched[i] is sched[10] for i in range(10, 20))
    assert sched[30] is not sched[10]
    assert [sb.block_pasted(i) for i in (0, 9, 10, 19, 20, 30)] == [False, False, True, True, False, True]


def test_lighting_and_jitter_are_small_and_known():
    sc = _scene(0, t_end=40.0)
    j = np.array([sc.jitter(t) for t in np.arange(0, 40, 0.1)])
    assert np.abs(j).max() <= 2.5 and 0.1 < j.std() < 1.5
    g = np.array([sc.gain(t) for t in np.arange(0, 40, 0.1)])
    assert np.abs(g - 1).max() < 0.06
    _, lab = sc.render(2.0, 0, gain=1.3)
    assert abs(lab["gain"] - 1.3) < 0.02


def test_clip_is_lossless(tmp_path):
    sc = _scene(0)
    frames = [sc.render(t, k)[0] for k, t in enumerate((0.0, 0.5, 1.0))]
    assert sb.write_mkv(tmp_path / "c.mkv", iter(frames), 0.5) == 3
    cap = cv2.VideoCapture(str(tmp_path / "c.mkv"))
    back = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        back.append((f, cap.get(cv2.CAP_PROP_POS_MSEC)))
    cap.release()
    assert len(back) == 3
    assert all(np.array_equal(a, b) for a, (b, _) in zip(frames, back, strict=True))
    assert back[1][1] == pytest.approx(2000.0)  # 0.5 frames/s: time advances 2 s per frame


# ---------------------------------------------------------------------------------------------------- metrics


def _ev(i: int, score: float, above: bool, alarm: bool = False, **kw) -> dict:
    return {"v": 1, "type": "frame", "frame": i, "time": i / 15, "score": score, "raw": score, "smoothed": score,
            "threshold": 4.0, "above_threshold": above, "alarm": alarm, "bbox": kw.get("bbox"),
            "shift": kw.get("shift")}  # fmt: skip


def test_frame_metrics_on_hand_made_events():
    labels = [sb.block_pasted(i) for i in range(40)]  # 0-9 clean, 10-19 pasted, 20-29 clean, 30-39 pasted
    events = []
    for i, lab in enumerate(labels):
        score = 6.0 + i * 0.01 if lab else 1.0 + i * 0.01
        above = lab and i % 5 != 0  # 16 of 20 pasted frames detected
        if i == 3:
            above, score = True, 5.0  # one false alarm, ranked below every pasted frame
        alarm = (lab and i % 10 >= 2) or i in (20, 21)  # the alarm's tail runs 2 frames into block 2
        events.append(_ev(i, score, above, alarm))
    m = sb.frame_metrics(events, labels)
    assert m["auroc"] == pytest.approx(1.0)
    assert m["false_alarm_rate"] == pytest.approx(1 / 20)
    assert m["detection_rate"] == pytest.approx(16 / 20)
    assert m["alarm_detection_rate"] == pytest.approx(16 / 20)
    assert m["alarm_false_rate"] == pytest.approx(2 / 20)
    assert m["alarm_false_rate_excl_tail"] == pytest.approx(0.0)
    assert m["blocks"] == {"pasted": 2, "clean": 2, "pasted_with_alarm": 2, "clean_with_alarm": 0,
                           "pasted_with_above": 2, "clean_with_above": 1}  # fmt: skip
    # The order matters: scores that rank clean frames above pasted ones give AUROC 0.
    inverted = [dict(e, score=-e["score"]) for e in events]
    assert sb.frame_metrics(inverted, labels)["auroc"] == pytest.approx(0.0)


def test_frame_metrics_count_missing_frames_and_ties():
    labels = [False, False, True, True]
    events = [_ev(0, 1.0, False), _ev(2, 1.0, False), _ev(3, 2.0, True)]  # frame 1 skipped
    m = sb.frame_metrics(events, labels)
    assert m["missing"] == 1 and m["frames"] == 3
    assert m["auroc"] == pytest.approx(0.75)  # one tie counted half: (1 + 0.5) / 2
    assert m["false_alarm_rate"] == 0.0 and m["detection_rate"] == 0.5


def test_read_events_takes_the_last_run(tmp_path):
    path = tmp_path / "ev.jsonl"
    lines = [{"v": 1, "type": "start", "threshold": 3.0}, _ev(0, 9.0, True), {"v": 1, "type": "end"},
             {"v": 1, "type": "start", "threshold": 4.0}, _ev(0, 1.0, False),
             {"v": 1, "type": "error", "frame": 1, "reason": "x"}, _ev(2, 2.0, False),
             {"v": 1, "type": "alarm", "frame": 2, "event": "start"}, {"v": 1, "type": "end"}]  # fmt: skip
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    start, frames, errors = sb.read_events(path)
    assert start["threshold"] == 4.0
    assert [e["frame"] for e in frames] == [0, 2] and frames[0]["score"] == 1.0
    assert len(errors) == 1


def test_baselines_catch_a_brightness_confound():
    labels = [False] * 5 + [True] * 5
    stats = [(100.0 + i, 30.0) for i in range(10)]  # brighter frames are exactly the pasted ones
    b = sb.baseline_aurocs(stats, labels)
    assert b["mean_brightness"]["auroc"] == 1.0
    assert b["std"]["auroc"] == 0.5  # constant: no information
    darker = sb.baseline_aurocs([(100.0 - i, 30.0) for i in range(10)], labels)
    assert darker["mean_brightness"]["auroc"] == 0.0 and darker["mean_brightness"]["two_sided"] == 1.0


def test_false_alarms_are_attributed_to_people_and_registration():
    labels = [
        {"frame": 0, "pasted": False, "people": [[100, 50, 20, 60]], "gain": 1.0, "expected_shift": [0.5, 0.0]},
        {"frame": 1, "pasted": False, "people": [[10, 10, 5, 10]], "gain": 1.01, "expected_shift": [0.0, 0.0]},
        {"frame": 2, "pasted": False, "people": [], "gain": 1.02, "expected_shift": [0.0, 0.0]},
        {"frame": 3, "pasted": True, "people": [], "gain": 1.0, "expected_shift": [0.0, 0.0],
         "object": {"bbox": [200, 100, 30, 30]}},
    ]  # fmt: skip
    events = [
        _ev(0, 6.0, True, bbox=[105, 60, 10, 20], shift=[0.5, 0.0]),  # on the person; registration right
        _ev(1, 5.0, True, bbox=[300, 200, 16, 16], shift=[20.0, 0.0]),  # off anyone; registration 20 px off
        _ev(2, 1.0, False, shift=[0.0, 0.0]),
        _ev(3, 9.0, True, bbox=[195, 95, 40, 40], shift=[0.0, 0.0]),
    ]
    fa = sb.attribute_false_alarms(events, labels)
    assert fa["count"] == 2 and fa["on_person"] == 1
    assert fa["top"][0]["frame"] == 0 and fa["top"][0]["on_person"]
    assert fa["top"][1]["shift_error"] == pytest.approx(20.0)
    assert fa["registration_error_px"]["max"] == pytest.approx(20.0)
    assert fa["registration_error_px"]["over_2px"] == 1
    assert sb.detection_boxes(events, labels) == {"above_with_box": 1, "box_on_object": 1}


def test_calibrate_plan_prefers_out_and_never_touches_the_model():
    with_out = "Options:\n  --source TEXT  Normal frames.\n  --out PATH  Write a new bundle.\n  --in-place  x\n"
    args, copy = sb.calibrate_plan(with_out, "models/anomaly", "c.mkv", "o/cal")
    assert args == ["calibrate", "models/anomaly", "--source", "c.mkv", "--out", "o/cal"] and not copy
    in_place = "Options:\n  --source TEXT\n  --output-dir PATH\n  --in-place  Rewrite MODEL.\n"
    args, copy = sb.calibrate_plan(in_place, "models/anomaly", "c.mkv", "o/cal")
    assert args == ["calibrate", "o/cal", "--source", "c.mkv", "--in-place"] and copy
    old = "Options:\n  --source TEXT\n  --frames INTEGER RANGE\n"
    args, copy = sb.calibrate_plan(old, "models/anomaly", "c.mkv", "o/cal")
    assert args == ["calibrate", "o/cal", "--source", "c.mkv"] and copy
