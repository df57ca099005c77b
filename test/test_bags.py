"""rosbag2 focal-stack bags: bit-exact round trips, the sample bags, corrupted stacks, ros_io agreement."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from ddfs_ros import data_splits
from ddfs_ros.eval import bag_cli
from ddfs_ros.eval.bags import (StackBagWriter, image_to_array, open_bag_info, read_bag, read_stacks,
                                stack_from_messages, stack_messages)
from ddfs_ros.optics import LensModel
from ddfs_ros.stack import FocalStack, StackError

SAMPLE_BAGS = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'sample_bags'


def _stack(F=3, H=16, W=12, C=3, seed=0, stamp_ns=1_700_000_000_123_456_789, f_numbers=None) -> FocalStack:
    rng = np.random.default_rng(seed)
    frames = np.round(rng.random((F, H, W, C)) * 255).astype(np.float32) / 255
    return FocalStack(frames, np.geomspace(0.3, 1.2, F), LensModel(0.012, 2.8, 5e-6), f_numbers=f_numbers,
                      stamp_ns=stamp_ns, frame_id='cam_optical')


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_ddfs_bag_make_reads_back_bit_exactly(tmp_path, storage):
    """What `ddfs-bag make` renders is what the reader returns: pixels, stamps, lens values, depth."""
    cam = bag_cli.load_camera('motorcycle')
    cam.width, cam.height, cam.focus_jitter = 48, 40, 0.03   # tiny, and a different schedule per stack
    kept: list = []
    out = tmp_path / f'bag_{storage}'
    summary = bag_cli.make_bag(out, 'procedural', cam, stacks=3, storage=storage, keep=kept, seed=3)
    assert summary['stacks'] == 3
    info = open_bag_info(out)
    assert info.storage == storage and info.namespace == '/camera' and info.has_depth_gt
    got = list(read_bag(out))
    assert len(got) == 3
    for (stack, depth), item in zip(kept, got):
        assert item.ok, item.stack
        back = item.stack
        assert item.stamp_ns == back.stamp_ns == stack.stamp_ns
        # pixels: the bag's rgb8 bytes are exactly the rendered (8-bit quantised) frames
        from ddfs_ros.eval.bags import typestore
        msg = typestore().deserialize_cdr(item.raw['image'][2], 'sensor_msgs/msg/Image')
        raw = image_to_array(msg).reshape(stack.frames.shape)
        np.testing.assert_array_equal(raw, np.round(stack.frames * 255).astype(np.uint8))
        np.testing.assert_array_equal(back.frames, raw.astype(np.float32) * np.float32(1 / 255))
        # lens values: float64 bit-exact
        assert back.focus_m.tolist() == stack.focus_m.tolist()
        assert back.lens == stack.lens
        assert back.f_numbers is None
        np.testing.assert_array_equal(item.depth_gt, depth)   # NaN where unknown, same places
    stamps = [i.stamp_ns for i in got]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    assert len({tuple(s.focus_m) for s, _ in kept}) == 3
    # QoS the capture node offers, recorded for `ros2 bag play`
    meta = yaml.safe_load((out / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    for t in meta['topics_with_message_count']:
        qos = t['topic_metadata']['offered_qos_profiles']
        assert qos and qos[0]['reliability'] == 'reliable' and qos[0]['durability'] == 'volatile'


def test_ddfs_bag_cli_make_and_info(tmp_path, capsys):
    out = tmp_path / 'cli_bag'
    rc = bag_cli.main(['make', str(out), '--source', 'procedural', '--stacks', '2', '--size', '32x32',
                       '--focus', '0.4,0.8,1.6', '--storage', 'sqlite3', '--namespace', 'robot/cam',
                       '--no-noise'])
    assert rc == 0
    assert open_bag_info(out).namespace == '/robot/cam'
    stacks = list(read_stacks(out))
    assert [s.focus_m.tolist() for s, _ in stacks] == [[0.4, 0.8, 1.6]] * 2
    assert all(gt is not None and gt.shape == (32, 32) for _, gt in stacks)
    assert bag_cli.main(['info', str(out)]) == 0
    assert 'robot/cam' in capsys.readouterr().out
    # the band-limited disk: same scenes and focus, other frames
    otf = tmp_path / 'cli_bag_otf'
    assert bag_cli.main(['make', str(otf), '--source', 'procedural', '--stacks', '2', '--size', '32x32',
                         '--focus', '0.4,0.8,1.6', '--storage', 'sqlite3', '--no-noise', '--psf', 'disk_otf']) == 0
    for (a, ga), (b, gb) in zip(stacks, read_stacks(otf)):
        np.testing.assert_array_equal(ga, gb)
        assert not np.array_equal(a.frames, b.frames)


@pytest.mark.skipif(not (data_splits.SHARED_DATA / 'real_dfd_indoor_train' / 'pairs.csv').is_file(),
                    reason='needs ../shared/data/real_dfd_indoor_train (see its README)')
def test_ddfs_bag_pairs_writes_the_real_shots_as_aperture_only_stacks(tmp_path, capsys):
    from ddfs_ros.scenes import real_dfd_scenes
    out = tmp_path / 'pairs'
    assert bag_cli.main(['pairs', str(out), '--split', 'val', '--select', '0:2', '--width', '160']) == 0
    assert 'wrote 2 real aperture pairs' in capsys.readouterr().out
    stacks = list(read_stacks(out))
    assert len(stacks) == 2
    root = data_splits.SHARED_DATA / 'real_dfd_indoor_train'
    first_val = next(i for i in range(100) if data_splits.real_dfd_split(i) == 'val')
    wide = next(s for i, s in enumerate(real_dfd_scenes(root, aperture='f2.8')) if i == first_val)
    stack, gt = stacks[0]
    H, W = wide.shape[:2]
    assert stack.aperture_only and stack.per_frame_f_numbers().tolist() == [2.8, 8.0]
    assert stack.frames.shape == (2, round(H * 160 / W), 160, 3) and gt.shape == stack.frames.shape[1:3]
    assert stack.lens.pixel_pitch_m == pytest.approx(wide.meta['pixel_pitch_m'] * W / 160)
    assert np.nanmin(gt) > 0.1 and np.nanmax(gt) < 12.0           # metres, from the depth camera
    # the frames are the real shots, area-averaged (8-bit): the f/2.8 one is the first
    import cv2
    small = cv2.resize(np.clip(wide.rgb, 0, 1).astype(np.float32), (160, stack.height), interpolation=cv2.INTER_AREA)
    assert np.abs(stack.frames[0] - small).max() < 1.0 / 255 + 1e-6
    assert bag_cli.main(['pairs', str(out)]) == 2                  # never over an existing bag


def _write_corrupted_bag(path: Path) -> list:
    """Good, wrong tile height, good, missing lens_state, NaN focus, good; returns the expected reasons."""
    with StackBagWriter(path) as w:
        for k, kind in enumerate(['good', 'tile', 'good', 'no_lens', 'nan_focus', 'good']):
            stack = _stack(seed=k, stamp_ns=1_700_000_000_000_000_000 + k * 10_000_000)
            msgs = stack_messages(stack, depth_gt=np.full((16, 12), 1.0, np.float32))
            if kind == 'tile':
                msgs['camera_info'].height = 15          # 48 rows are not a tiling of 15-row frames
            elif kind == 'no_lens':
                del msgs['lens_state']
            elif kind == 'nan_focus':
                msgs['lens_state'].position[1] = math.nan
            w.write_messages(msgs, stack.stamp_ns)
    return [None, 'tile_mismatch', None, 'missing_lens', 'nan_lens', None]


def test_corrupted_stacks_are_reported_one_by_one(tmp_path):
    expected = _write_corrupted_bag(tmp_path / 'bad')
    got = list(read_stacks(tmp_path / 'bad'))
    assert len(got) == len(expected)
    for (stack, gt), reason in zip(got, expected):
        if reason is None:
            assert isinstance(stack, FocalStack) and gt is not None
        else:
            assert isinstance(stack, StackError) and stack.reason == reason, stack
            assert stack.stamp_ns > 0


def test_sample_bags_read_as_they_are():
    if not SAMPLE_BAGS.is_dir():
        pytest.skip(f'{SAMPLE_BAGS} is absent (shared data not mounted)')
    moto = list(read_stacks(SAMPLE_BAGS / 'motorcycle_sweep'))
    assert len(moto) == 3
    for stack, gt in moto:
        assert isinstance(stack, FocalStack), stack
        assert stack.frames.shape == (5, 256, 256, 3)
        assert stack.lens == LensModel(0.025, 2.0, 21e-6)
        assert np.all(np.diff(stack.focus_m) > 0)
        assert gt.shape == (256, 256) and 2.0 < np.nanmedian(gt) < 5.0
    pairs = list(read_stacks(SAMPLE_BAGS / 'dfd_aperture_pairs'))
    assert len(pairs) == 2
    for stack, gt in pairs:
        assert isinstance(stack, FocalStack), stack
        assert stack.focus_m.tolist() == [1.7, 1.7] and stack.f_numbers.tolist() == [2.8, 8.0]
        assert stack.lens.pixel_pitch_m == pytest.approx(36e-6 * 432 / 256)
        assert np.isfinite(gt).all() and 0.2 < gt.min() < gt.max() < 10.0


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'mono8', 'mono16', '32FC1'])
def test_reader_agrees_with_the_node_conversion(encoding):
    """bags.stack_from_messages (no rclpy) gives the node's ros_io.msgs_to_stack result, bit for bit."""
    ros_io = pytest.importorskip('ddfs_ros.ros_io')
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image, JointState

    from ddfs_ros.eval.bags import typestore
    ts = typestore()
    stack = _stack(C=1 if encoding.startswith(('mono', '32F')) else 3, f_numbers=[2.0, 2.8, 4.0])
    msgs = stack_messages(stack, encoding)
    ours = stack_from_messages(msgs['image'], msgs['camera_info'], msgs['lens_state'])
    wire = {r: bytes(ts.serialize_cdr(m, m.__msgtype__)) for r, m in msgs.items()}
    node = ros_io.msgs_to_stack(deserialize_message(wire['image'], Image),
                                deserialize_message(wire['camera_info'], CameraInfo),
                                deserialize_message(wire['lens_state'], JointState)).validate()
    np.testing.assert_array_equal(ours.frames, node.frames)
    assert ours.frames.dtype == node.frames.dtype
    assert ours.focus_m.tolist() == node.focus_m.tolist() and ours.lens == node.lens
    assert ours.f_numbers.tolist() == node.f_numbers.tolist() and ours.stamp_ns == node.stamp_ns
    # and both reject the same broken input for the same reason
    msgs['camera_info'].height = 15
    with pytest.raises(StackError) as a:
        stack_from_messages(msgs['image'], msgs['camera_info'], msgs['lens_state'])
    wire_info = bytes(ts.serialize_cdr(msgs['camera_info'], 'sensor_msgs/msg/CameraInfo'))
    with pytest.raises(StackError) as b:
        ros_io.msgs_to_stack(deserialize_message(wire['image'], Image), deserialize_message(wire_info, CameraInfo),
                             deserialize_message(wire['lens_state'], JointState))
    assert a.value.reason == b.value.reason == 'tile_mismatch'


def test_copying_a_bag_with_added_ground_truth_keeps_it_unchanged(tmp_path):
    """The docs' recipe for adding depth_gt to a recorded bag: frames, stamps, lens and K survive exactly."""
    src = tmp_path / 'recorded'
    with StackBagWriter(src, namespace='/robot') as w:
        for k in range(2):
            s = _stack(seed=k, stamp_ns=1_700_000_000_000_000_000 + k)
            s.meta['K'] = np.array([[101.5, 0, 5.25], [0, 101.5, 7.75], [0, 0, 1]])
            w.write(s)
    with StackBagWriter(tmp_path / 'with_gt', namespace='/robot') as out:
        for item in read_bag(src):
            out.write(item.stack, depth_gt=np.full((16, 12), 2.5, np.float32))
    a, b = list(read_bag(src)), list(read_bag(tmp_path / 'with_gt'))
    assert [x.depth_gt for x in a] == [None, None] and all(np.all(x.depth_gt == 2.5) for x in b)
    for x, y in zip(a, b):
        assert x.stamp_ns == y.stamp_ns and x.raw['image'][2] == y.raw['image'][2]   # same image bytes
        np.testing.assert_array_equal(x.stack.meta['K'], y.stack.meta['K'])
        assert x.stack.meta['K'][0, 2] == 5.25
        assert x.stack.lens == y.stack.lens and x.stack.focus_m.tolist() == y.stack.focus_m.tolist()
