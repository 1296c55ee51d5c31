"""Pipelines: tiling with overlap, tile filters, the stage DAG with two real ONNX engines, in-process and in the daemon."""
import numpy as np
import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from engines.errors import UserError
from onboard.engineset import EngineSet
from onboard.pipeline import Pipeline, TileFilter
from onboard.settings import DaemonSettings
from onboard.tiling import TileGrid
from onboard.wire import decode, parse_frame
from daemon_helpers import frame, landcover_bundle, push_socket, start_daemon, wait_for


@hsettings(max_examples=60, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), tile=st.integers(4, 24), data=st.data())
def test_overlapping_tiles_cover_the_frame_and_join_back(h, w, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    grid = TileGrid(h, w, tile, overlap)
    frame_ = np.arange(2 * h * w, dtype=np.int32).reshape(2, h, w) + 1
    tiles = grid.cut(frame_)
    assert tiles.shape == (len(grid), 2, tile, tile)
    for (r, c, vh, vw), t in zip(grid.windows(), tiles):
        assert vh > 0 and vw > 0
        np.testing.assert_array_equal(t[:, :vh, :vw], frame_[:, r:r + vh, c:c + vw])
        assert not t[:, vh:, :].any() and not t[:, :, vw:].any()       # zero padding past the frame
    np.testing.assert_array_equal(grid.join(tiles[:, 0]), frame_[0])  # cores reassemble the frame exactly
    assert grid.valid_mask().sum() == sum(vh * vw for _, _, vh, vw in grid.windows())


def test_tile_filter_reads_comparisons_and_refuses_anything_else():
    f = TileFilter("cloud_fraction <= 0.3 and cloud.kept == 1")
    attrs = {"cloud_fraction": np.array([0.1, 0.5, np.nan, 0.3]), "cloud.kept": np.array([1.0, 1.0, 1.0, 0.0])}
    assert f(attrs, 4).tolist() == [True, False, False, False]
    assert TileFilter("")({}, 3).all()
    for bad in ("cloud_fraction <= ", "__import__('os')", "a < 1 or b > 2", "x ~ 3"):
        with pytest.raises(UserError, match="tile filter"):
            TileFilter(bad)


def _settings(tiny_bundle, lc, **kw):
    stages = [{"name": "cloud", "kind": "cloud_screen", "bundle": tiny_bundle},
              {"name": "landcover", "kind": "engine", "bundle": lc, "after": ["cloud"],
               "when": "cloud_fraction <= 0.3", "outputs": ["class_fraction", "confidence"], "priority": 1}]
    stages += kw.pop("extra_stages", [])
    return DaemonSettings.from_mapping({"pipeline": {"msi": {"priority": 2, "overlap": kw.pop("overlap", 0),
                                                             "stages": stages}}, "intra_op_threads": 1, **kw})


def test_dag_errors_name_the_stage_and_the_fix(tiny_bundle, tmp_path):
    lc = landcover_bundle(str(tmp_path))
    s = _settings(tiny_bundle, lc)
    bad_parent = dict(s.pipeline["msi"].stages[1].__dict__, after=["nope"])
    cycle = [dict(s.pipeline["msi"].stages[0].__dict__, after=["landcover"]), s.pipeline["msi"].stages[1].__dict__]
    unknown_attr = dict(s.pipeline["msi"].stages[1].__dict__, when="anomaly_score > 2")
    for stages, match in (([s.pipeline["msi"].stages[0].__dict__, bad_parent], "not a stage"),
                          (cycle, "cycle"), ([s.pipeline["msi"].stages[0].__dict__, unknown_attr], "no stage before")):
        bad = DaemonSettings.from_mapping({"pipeline": {"msi": {"stages": stages}}})
        with pytest.raises(UserError, match=match):
            Pipeline("msi", bad.pipeline["msi"], EngineSet(bad), 16)
    with pytest.raises(UserError, match="unknown key"):
        DaemonSettings.from_mapping({"pipeline": {"msi": {"stages": [{"name": "x", "bundle": lc, "colour": 1}]}}})


def test_stages_run_only_on_clear_tiles_with_shared_batches(tiny_bundle, tmp_path):
    s = _settings(tiny_bundle, str(landcover_bundle(str(tmp_path))), overlap=16)
    pipe = Pipeline("msi", s.pipeline["msi"], EngineSet(s), max_batch=16)
    data = np.zeros((6, 160, 160), np.uint16)            # clear (DN 0) ...
    data[:, 80:, :] = 4095                                 # ... over a cloudy bottom half
    frames = [parse_frame(decode(frame(i, value=0))) for i in range(2)]
    frames.append(parse_frame(decode(frame(7, size=160, value=0)[:2] + [data])))
    out = pipe.run(frames, "fp32")
    assert [len(r) for r in out] == [2, 2, 2]
    cloud, lc = out[2]
    assert (cloud.stage, lc.stage, cloud.priority, lc.priority) == ("cloud", "landcover", 2, 1)
    hc, hl = decode(cloud.parts).header, decode(lc.parts).header
    grid = TileGrid(160, 160, 64, 16)
    clear = [i for i, t in enumerate(hc["tiles"]) if t["cloud"] <= 0.3]
    assert hc["overlap"] == 16 and len(hc["tiles"]) == len(grid) == 9 and 0 < len(clear) < 9
    assert [t["i"] for t in hl["tiles"]] == clear              # land cover ran on the clear tiles only
    assert hl["engine"] == {"name": "landcover", "version": 1, "precision": "fp32"}
    assert hl["frame_id"] == 7 and hl["stage"] == "landcover" and hl["result_id"].startswith("msi:7:landcover:")
    msg = decode(lc.parts)
    fractions = np.frombuffer(msg.buffers[0], np.float32).reshape(len(clear), 4)
    np.testing.assert_allclose(fractions.sum(axis=1), 1.0, rtol=1e-5)
    assert all(0.25 <= t["confidence"] <= 1.0 for t in hl["tiles"])


def test_daemon_runs_the_two_engine_dag_and_downlinks_provenance(tiny_bundle, tmp_path):
    from ground.receiver import GroundReceiver
    lc = landcover_bundle(str(tmp_path))
    stages = [{"name": "cloud", "kind": "cloud_screen", "bundle": tiny_bundle},
              {"name": "landcover", "bundle": lc, "after": ["cloud"], "when": "cloud_fraction <= 0.3",
               "outputs": ["class_fraction", "confidence"], "priority": 1}]
    d = start_daemon(tmp_path, pipeline={"msi": {"stages": stages}, "*": {"stages": stages[:1]}})
    s = d.settings
    rx = GroundReceiver(s.results_endpoint, ack_endpoint=s.ack_endpoint)
    push = push_socket(s.sensor_endpoint)
    for i in range(4):
        push.send_multipart(frame(i, value=0 if i % 2 == 0 else 4095))        # even frames clear, odd cloudy
    push.send_multipart(frame(9, stream="other", value=0))                    # only the "*" pipeline: cloud
    wait_for(lambda: rx.poll(200) is not None and len(rx.results) >= 7, what="7 results at the ground")
    by_stage = rx.summary()["by_stage"]
    assert by_stage == {"cloud": 5, "landcover": 2}
    lc_frames = sorted(h["frame_id"] for h in rx.results.values() if h["stage"] == "landcover")
    assert lc_frames == [0, 2]
    assert all(h["engine"]["name"] == "landcover" and h["stream"] == "msi" and h["variant"] == "fp32"
               and h["device"] == "CPU" for h in rx.results.values() if h["stage"] == "landcover")
    assert d.stop() == 0
    push.close(0)
    rx.close()
