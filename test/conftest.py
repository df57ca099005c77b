"""Shared pytest fixtures.

``tiny_engines``: UNTRAINED tiny networks of the three families (ddfs, dfv, dfv_cv) at
64 x 64 (D = 16 hypotheses uniform in depth 0.1..3.0 m; F = 5 frames for dfv), exported
like the shipped engines -- ONNX + ``torch.export`` program + manifest -- into a
session temp folder.  Returns ``{'ddfs': Path, 'dfv': Path, 'dfv_cv': Path}`` (the
manifest ``.json`` paths).  Built once per session (about 15 s on one core).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The environment of every ROS test and of the node processes they start: a domain of
#: this process's own, discovery on this host only, the package's Fast DDS profile.
ROS_ENV = {'ROS_DOMAIN_ID': str(1 + os.getpid() % 100), 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
           'FASTRTPS_DEFAULT_PROFILES_FILE': str(ROOT / 'config' / 'fastdds.xml')}


def pytest_configure(config):
    os.environ.update(ROS_ENV)          # before any rclpy context exists in this process


def wait_until(pred, timeout=10.0, period=0.01) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds passed; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(period)
    return bool(pred())


@pytest.fixture(scope='module')
def ros():
    """``(context, executor)``: an rclpy context and a 4-thread executor spinning in the background."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    executor = MultiThreadedExecutor(num_threads=4, context=ctx)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield ctx, executor
    executor.shutdown(timeout_sec=2.0)
    rclpy.try_shutdown(context=ctx)
    thread.join(timeout=5.0)


def stack_publishers(node, depth: int = 5) -> dict:
    """The three input publishers of the inference node (``{'image', 'camera_info', 'lens_state'}``)
    on ``node``, relative names, the node's publisher QoS."""
    from sensor_msgs.msg import CameraInfo, Image, JointState

    from ddfs_ros import ros_io
    from ddfs_ros.nodes.common import publisher_qos
    q = publisher_qos(depth)
    return {'image': node.create_publisher(Image, ros_io.TOPIC_IMAGE, q),
            'camera_info': node.create_publisher(CameraInfo, ros_io.TOPIC_CAMERA_INFO, q),
            'lens_state': node.create_publisher(JointState, ros_io.TOPIC_LENS_STATE, q)}


TINY_SIZE = 64
TINY_D = 16
TINY_F = 5
TINY_HYPOTHESES = {'d_min': 0.1, 'd_max': 3.0, 'spacing': 'depth'}


def build_tiny_engines(folder: Path) -> dict:
    """Export untrained tiny ddfs/dfv/dfv_cv engines to ``folder``; returns manifest paths."""
    import torch

    from ddfs_ros.engines.manifest import write_artifact_hashes
    from training.export import export_model
    from training.models import build_model

    out = {}
    for family, width in (('ddfs', 1 / 16), ('dfv', 1 / 8), ('dfv_cv', 1 / 8)):
        torch.manual_seed(0)
        model = build_model(family, width=width, num_hypotheses=TINY_D, num_frames=TINY_F)
        out[family] = export_model(
            model, family, folder / f'tiny_{family}.onnx', image_size=(TINY_SIZE, TINY_SIZE),
            num_hypotheses=TINY_D, num_frames=TINY_F, hypotheses=TINY_HYPOTHESES,
            train_focus_range=(0.3, 2.0), training={'note': 'untrained test fixture'},
            validation={}, name=f'tiny_{family}')
        # Record the .pt2 hash too (idempotent once training/export.py writes it itself):
        # the torch backend refuses programs the manifest does not vouch for.
        write_artifact_hashes(out[family])
    return out


@pytest.fixture(scope='session')
def tiny_engines(tmp_path_factory) -> dict:
    return build_tiny_engines(tmp_path_factory.mktemp('tiny_engines'))


@pytest.fixture(scope='session')
def tiny_engine(tiny_engines) -> dict:
    """Alias of :func:`tiny_engines`."""
    return tiny_engines


#: The tiny cost-volume engines (``cost_argmin_engines``): D and hypothesis range.
ARGMIN_D = 16
ARGMIN_HYPOTHESES = {'d_min': 0.1, 'd_max': 0.6, 'spacing': 'depth'}


def build_cost_argmin_engines(folder: Path, processing_width: int = 64) -> dict:
    """Export a tiny fully convolutional ``ddfs``-family network, dynamic and fixed-size.

    The network is ``softmax_D(-10 * cost_volume + conv3x3([image, cost_volume]))`` with
    the conv initialised at random and scaled by 0.01: an untrained network whose
    soft-argmin still follows the cost volume, so a depth it gives means something
    (the round-disk test needs that).  ``training/models`` bake sizes into their traced
    graphs, so this small net stands in for the dynamic-shape export until the
    retrained engines land.  ONNX only (``torch_program`` null).

    Returns ``{'dynamic': Path, 'fixed': Path}`` (manifests).  The dynamic one is
    exported with dynamic H and W (``size_multiple`` 8, validated 16 x 16 .. 256 x 256,
    ``train_processing_width`` = ``processing_width``); the fixed one at 64 x 64.
    """
    import hashlib
    import json
    import warnings

    import torch

    class TinyCostNet(torch.nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3 + d, d, 3, padding=1)
            with torch.no_grad():
                self.conv.weight.mul_(0.01)
                self.conv.bias.mul_(0.01)

        def forward(self, image, cost_volume, depths):
            logits = -10.0 * cost_volume + self.conv(torch.cat([image, cost_volume], 1))
            p = torch.softmax(logits, 1)
            d = depths[:, :, None, None]
            depth = (p * d).sum(1, keepdim=True)
            unc = ((p * (d - depth) ** 2).sum(1, keepdim=True) + 1e-12).sqrt()
            return depth, unc

    torch.manual_seed(0)
    model = TinyCostNet(ARGMIN_D).eval()
    out = {}
    for kind, (H, W) in (('dynamic', (48, 64)), ('fixed', (64, 64))):
        onnx_path = folder / f'argmin_{kind}.onnx'
        inputs = (torch.rand(1, 3, H, W), torch.rand(1, ARGMIN_D, H, W),
                  torch.linspace(ARGMIN_HYPOTHESES['d_min'], ARGMIN_HYPOTHESES['d_max'], ARGMIN_D)[None])
        hw = {2: 'H', 3: 'W'}
        dyn = {'image': hw, 'cost_volume': hw, 'depth': hw, 'uncertainty': hw} if kind == 'dynamic' else None
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(model, inputs, str(onnx_path), input_names=['image', 'cost_volume', 'depths'],
                              output_names=['depth', 'uncertainty'], opset_version=17, dynamo=False,
                              dynamic_axes=dyn)
        manifest = {
            'name': f'argmin_{kind}', 'family': 'ddfs', 'onnx': onnx_path.name,
            'sha256': hashlib.sha256(onnx_path.read_bytes()).hexdigest(), 'torch_program': None,
            'inputs': {'image': [1, 3, H, W], 'cost_volume': [1, ARGMIN_D, H, W], 'depths': [1, ARGMIN_D]},
            'outputs': {'depth': [1, 1, H, W], 'uncertainty': [1, 1, H, W]},
            'image_size': [H, W], 'num_hypotheses': ARGMIN_D, 'num_frames': None,
            'hypotheses': dict(ARGMIN_HYPOTHESES), 'train_focus_range': [0.1, 1.5],
            'reference_frame': 'farthest', 'max_coc_px': 10.0 * W / 64.0,
        }
        if kind == 'dynamic':
            manifest.update({'dynamic_size': True, 'size_multiple': 8, 'validated_size': [[16, 16], [256, 256]],
                             'train_processing_width': int(processing_width),
                             'max_coc_px': 10.0 * processing_width / 64.0})
        path = onnx_path.with_suffix('.json')
        path.write_text(json.dumps(manifest, indent=1))
        out[kind] = path
    return out


@pytest.fixture(scope='session')
def cost_argmin_engines(tmp_path_factory) -> dict:
    """:func:`build_cost_argmin_engines` in a session temp folder."""
    return build_cost_argmin_engines(tmp_path_factory.mktemp('argmin_engines'))


# -- The shipped engines (engines/*.json) -------------------------------------------------
# They are replaced from time to time (sizes, inputs, names change): tests read what they
# need from the manifest and skip, saying so, when an engine is absent.
SHIPPED_DIR = ROOT / 'engines'


def shipped_engine(name: str) -> Path:
    """``engines/NAME.json``, or skip the calling test naming the absent file."""
    path = SHIPPED_DIR / f'{name}.json'
    if not path.is_file():
        pytest.skip(f'shipped engine engines/{name}.json is absent (engines/ holds '
                    f'{sorted(p.name for p in SHIPPED_DIR.glob("*.json")) or "no manifest"})')
    return path


def shipped_engine_params() -> list:
    """One ``pytest.param`` per single-network ``engines/*.json`` (id = its name); one skipped
    param if there is none.  Ensemble manifests (``ddfs_ros.ensemble``) have no network of
    their own: ``test_ensemble.py`` covers them."""
    from ddfs_ros.ensemble import is_ensemble_manifest
    paths = sorted(p for p in SHIPPED_DIR.glob('*.json') if not is_ensemble_manifest(p))
    if not paths:
        return [pytest.param(None, marks=pytest.mark.skip(reason='no shipped engine in engines/'))]
    return [pytest.param(p, id=p.stem) for p in paths]


def validation_absrel(path: Path) -> float:
    """The held-out validation AbsRel the manifest records, or skip the calling test."""
    import json
    val = json.loads(Path(path).read_text()).get('validation') or {}
    value = val.get('abs_rel', val.get('absrel'))     # export_focus writes abs_rel, the old export absrel
    if value is None:
        pytest.skip(f'{Path(path).name} records no validation AbsRel to compare with')
    return float(value)


#: Depth of the plane :func:`rendered_plane_stack` renders (m).
PLANE_DEPTH_M = 3.0


def rendered_plane_stack(size: int = 128, noise=None, **stack_kw):
    """A simulated 5-frame sweep (focus 2.2-4.7 m) of a textured fronto-parallel plane at 3 m."""
    import numpy as np

    from ddfs_ros.cameras.simulated import SimulatedCamera
    from ddfs_ros.stack import FocalStack
    cam = SimulatedCamera('plane', size, size, 0.05, 2.0, 42e-6, noise=noise, plane_depth_m=PLANE_DEPTH_M)
    sweep = cam.capture_sweep(np.geomspace(2.2, 4.7, 5))
    return FocalStack(sweep.frames, sweep.focus_m, cam.lens, **stack_kw)
