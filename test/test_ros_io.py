"""FocalStack <-> ROS messages: round trips on every encoding, rejections, outputs, clouds."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, JointState

from ddfs_ros import ros_io
from ddfs_ros.optics import LensModel
from ddfs_ros.pointcloud import POINT_DTYPE, xyzrgb_points
from ddfs_ros.stack import FocalStack

SAMPLE_BAGS = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'sample_bags'


def _stack(F=3, H=12, W=10, C=3, seed=0, f_numbers=None) -> FocalStack:
    rng = np.random.default_rng(seed)
    return FocalStack(rng.random((F, H, W, C), dtype=np.float32), np.linspace(0.3, 1.2, F),
                      LensModel(0.012, 2.8, 5e-6), f_numbers=f_numbers, stamp_ns=1_700_000_123_456_789,
                      frame_id='cam_optical')


@pytest.mark.parametrize('encoding', list(ros_io.ENCODINGS))
def test_stack_round_trip_every_encoding(encoding):
    stack = _stack(C=1 if encoding in ('mono8', 'mono16', '32FC1') else 3)
    image, info, lens = ros_io.stack_to_msgs(stack, encoding)
    # through the wire format too: what a subscriber gets
    image, info, lens = (deserialize_message(serialize_message(m), type(m)) for m in (image, info, lens))
    assert (image.height, image.width, image.encoding) == (3 * 12, 10, encoding)
    assert (info.height, info.width) == (12, 10)
    back = ros_io.msgs_to_stack(image, info, lens)
    expect = ros_io.pixels_to_unit(ros_io.unit_to_pixels(stack.frames, encoding), encoding)
    np.testing.assert_array_equal(back.frames, expect.reshape(back.frames.shape))
    quantum = {'mono8': 1 / 255, 'rgb8': 1 / 255, 'bgr8': 1 / 255, 'mono16': 1 / 65535, '32FC1': 1e-7}[encoding]
    assert np.abs(back.frames - stack.frames).max() <= quantum / 2 + 1e-7
    np.testing.assert_allclose(back.focus_m, stack.focus_m)
    assert back.lens == stack.lens
    assert back.stamp_ns == stack.stamp_ns and back.frame_id == 'cam_optical'
    assert back.meta['K'][0, 0] == pytest.approx(0.012 / 5e-6)


def test_bgr8_is_channel_reversed_rgb8():
    stack = _stack()
    rgb = ros_io.image_to_array(ros_io.stack_to_msgs(stack, 'rgb8')[0])
    bgr = ros_io.image_to_array(ros_io.stack_to_msgs(stack, 'bgr8')[0])
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])


def test_per_frame_f_numbers_round_trip():
    stack = FocalStack(np.zeros((2, 8, 8, 3), np.float32), [1.7, 1.7], LensModel(0.035, 2.8, 6e-5),
                       f_numbers=[2.8, 8.0])
    image, info, lens = ros_io.stack_to_msgs(stack)
    assert 'f_number_1' in lens.name
    back = ros_io.msgs_to_stack(image, info, lens)
    np.testing.assert_allclose(back.f_numbers, [2.8, 8.0])
    back.validate()     # same focus, different aperture: a valid depth-from-defocus stack


def test_padded_rows_and_big_endian_mono16():
    arr = (np.arange(6 * 5, dtype=np.uint16) * 1000).reshape(6, 5)
    rows = arr.astype('>u2').tobytes()
    padded = b''.join(rows[i * 10:(i + 1) * 10] + b'\x00\x00' for i in range(6))
    msg = Image(height=6, width=5, encoding='mono16', is_bigendian=1, step=12, data=padded)
    got = ros_io.image_to_array(msg)
    np.testing.assert_array_equal(got[..., 0], arr)


@pytest.mark.skipif(not ros_io.have_cv_bridge(), reason='cv_bridge does not import here (no ROS install)')
@pytest.mark.parametrize('encoding', list(ros_io.ENCODINGS))
def test_cv_bridge_and_numpy_agree(encoding):
    dtype, ch = ros_io.ENCODINGS[encoding]
    rng = np.random.default_rng(1)
    arr = (rng.random((7, 9, ch)) * (1 if dtype == np.float32 else np.iinfo(dtype).max)).astype(dtype)
    via_bridge = ros_io.array_to_image(arr, encoding)
    via_numpy = ros_io.numpy_array_to_image(arr, encoding, via_bridge.header)
    assert bytes(via_bridge.data) == bytes(via_numpy.data) and via_bridge.step == via_numpy.step
    np.testing.assert_array_equal(ros_io.image_to_array(via_numpy),
                                  ros_io._numpy_image_to_array(via_numpy, dtype, ch))


def _good_triple():
    return ros_io.stack_to_msgs(_stack(F=3, H=8, W=8))


def _bad(case):
    image, info, lens = _good_triple()
    if case == 'unsupported_encoding':
        image.encoding = 'rgba8'
    elif case == 'tile_mismatch':
        info.height = 7
    elif case == 'data_length':
        image.data = bytes(image.data)[:-3]
    elif case == 'bad_size':
        info.height = 0
    elif case == 'too_large':
        return image, info, lens, 100
    elif case == 'nan_lens':
        lens.position = [float('nan')] + list(lens.position)[1:]
    elif case == 'nonpositive_lens':
        lens.position = list(lens.position[:3]) + [-2.0] + list(lens.position[4:])
    elif case == 'missing_lens':
        i = list(lens.name).index('pixel_pitch')
        lens.name = [n for j, n in enumerate(lens.name) if j != i]
        lens.position = [v for j, v in enumerate(lens.position) if j != i]
    elif case == 'lens_frame_mismatch':
        lens.name = list(lens.name) + ['focus_distance_3']
        lens.position = list(lens.position) + [2.0]
    elif case == 'bad_lens_state':
        lens.position = list(lens.position)[:-1]
    elif case == 'stamp_mismatch':
        lens.header.stamp.nanosec += 1
    return image, info, lens, None


@pytest.mark.parametrize('reason', ['unsupported_encoding', 'tile_mismatch', 'data_length', 'bad_size', 'too_large',
                                    'nan_lens', 'nonpositive_lens', 'missing_lens', 'lens_frame_mismatch',
                                    'bad_lens_state', 'stamp_mismatch'])
def test_bad_messages_are_rejected_with_reason(reason):
    image, info, lens, limit = _bad(reason)
    with pytest.raises(ros_io.InputError) as e:
        ros_io.msgs_to_stack(image, info, lens, max_stack_bytes=limit)
    assert e.value.reason == reason
    assert e.value.topic in (ros_io.TOPIC_IMAGE, ros_io.TOPIC_CAMERA_INFO, ros_io.TOPIC_LENS_STATE)
    assert str(e.value)


def test_focal_length_from_K_when_not_given():
    stack = _stack()
    image, info, lens = ros_io.stack_to_msgs(stack, include_focal_length=False)
    assert 'focal_length' not in lens.name
    back = ros_io.msgs_to_stack(image, info, lens)
    assert back.lens.focal_length_m == pytest.approx(stack.lens.focal_length_m)


@pytest.mark.skipif(not SAMPLE_BAGS.is_dir(), reason='../shared/data/sample_bags not present')
def test_reads_bags_written_by_another_tool():
    from rosbags.rosbag2 import Reader
    with Reader(SAMPLE_BAGS / 'dfd_aperture_pairs') as reader:
        parts = {}
        for con, _, raw in reader.messages():
            role = con.topic.split('/')[-1]
            cls = {'image': Image, 'camera_info': CameraInfo, 'lens_state': JointState}.get(role)
            if cls is not None:
                parts[role] = deserialize_message(raw, cls)
            if len(parts) == 3:
                break
    stack = ros_io.msgs_to_stack(parts['image'], parts['camera_info'], parts['lens_state'])
    assert stack.frames.shape == (2, 256, 256, 3)
    np.testing.assert_allclose(stack.f_numbers, [2.8, 8.0])
    assert stack.lens.focal_length_m == pytest.approx(0.035)
    stack.validate()


def test_depth_image_keeps_nan_and_colorized_is_fixed_range():
    depth = np.linspace(0.5, 2.5, 6 * 8, dtype=np.float32).reshape(6, 8)
    depth[0, 0] = np.nan
    header = ros_io.make_header(5, 'cam')
    msg = ros_io.depth_to_image(depth, header)
    assert msg.encoding == '32FC1' and msg.step == 8 * 4
    np.testing.assert_array_equal(ros_io.image_to_depth(msg), depth)
    col = ros_io.colorized_depth_image(depth, 0.5, 2.5, header)
    img = ros_io.image_to_array(col)
    assert col.encoding == 'bgr8' and img.shape == (6, 8, 3)
    assert img[0, 0].tolist() == [0, 0, 0]
    near, far = img[0, 1].astype(int), img[-1, -1].astype(int)
    assert near[2] > near[0] and far[0] > far[2]        # near = red, far = blue
    # the same depth colours the same in another image (fixed range, not per-image min/max)
    other = ros_io.image_to_array(ros_io.colorized_depth_image(depth[3:], 0.5, 2.5, header))
    np.testing.assert_array_equal(other, img[3:])


def test_point_cloud_geometry_colour_and_layout():
    H, W = 6, 8
    depth = np.full((H, W), 2.0, np.float32)
    depth[1, 2] = np.nan
    depth[2, 3] = -1.0
    K = [100.0, 0, 3.5, 0, 100.0, 2.5, 0, 0, 1]
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = 7
    msg = ros_io.depth_to_cloud(depth, K, rgb, ros_io.make_header(9, 'cam'))
    assert msg.width == H * W - 2 and msg.height == 1 and msg.point_step == 16
    assert [f.name for f in msg.fields] == ['x', 'y', 'z', 'rgb'] and [f.offset for f in msg.fields] == [0, 4, 8, 12]
    pts = ros_io.cloud_to_points(msg)
    np.testing.assert_allclose(pts['z'], 2.0)
    first = pts[0]      # pixel (0, 0)
    assert first['x'] == pytest.approx((0 - 3.5) / 100 * 2.0) and first['y'] == pytest.approx((0 - 2.5) / 100 * 2.0)
    colour = struct.unpack('<I', struct.pack('<f', first['rgb']))[0]
    assert colour == (200 << 16) | 7
    assert bytes(msg.data) == xyzrgb_points(depth, K, rgb).tobytes()
    assert np.isfinite(pts['x']).all()


@pytest.mark.skipif(not ros_io.have_sensor_msgs_py(), reason='sensor_msgs_py does not import here')
def test_point_cloud_matches_sensor_msgs_py():
    from sensor_msgs_py import point_cloud2
    depth = np.random.default_rng(0).uniform(0.5, 3, (9, 7)).astype(np.float32)
    pts = xyzrgb_points(depth, [50, 0, 3, 0, 50, 4, 0, 0, 1], None)
    header = ros_io.make_header(1, 'cam')
    ours = ros_io.numpy_cloud(header, pts)
    theirs = point_cloud2.create_cloud(header, ros_io.POINT_FIELDS, pts)
    assert bytes(ours.data) == bytes(theirs.data)
    assert (ours.point_step, ours.row_step, ours.width) == (theirs.point_step, theirs.row_step, theirs.width)


def test_point_dtype_is_16_bytes():
    assert POINT_DTYPE.itemsize == 16
