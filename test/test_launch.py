"""launch/depth.launch.py, config/depth.rviz, config/fastdds.xml and the YAML parameter files.

``launch``/``launch_ros`` are not pip-installable here: the file is checked statically
(ast) always, and loaded for real when ``launch_ros`` imports (a ROS 2 Jazzy install).
"""
from __future__ import annotations

import ast
import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / 'launch' / 'depth.launch.py'
ARGS = {'camera', 'device', 'engine', 'backend', 'camera_params', 'inference_params', 'namespace',
        'use_sim_time', 'rviz'}


def _launch_ros_available() -> bool:
    try:
        import launch
        import launch_ros  # noqa: F401
        return hasattr(launch, 'LaunchDescription')
    except ImportError:
        return False


def test_launch_file_imports_only_launch_packages_and_starts_both_nodes():
    tree = ast.parse(LAUNCH.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split('.')[0])
    assert roots <= {'launch', 'launch_ros', 'os', 'pathlib'}, roots
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert {'capture_node', 'inference_node', 'rviz2', 'ddfs_ros', 'depth.rviz', 'fastdds.xml',
            'FASTRTPS_DEFAULT_PROFILES_FILE'} <= strings
    declared = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, 'id', '') == 'DeclareLaunchArgument'}
    assert ARGS <= declared, ARGS - declared
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in funcs


@pytest.mark.skipif(not _launch_ros_available(), reason='launch/launch_ros not installed (no ROS 2 install)')
def test_launch_description_loads_with_real_launch():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node
    spec = importlib.util.spec_from_file_location('depth_launch', LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    assert isinstance(ld, LaunchDescription)
    names = {e.name for e in ld.entities if isinstance(e, DeclareLaunchArgument)}
    assert ARGS <= names
    execs = {e.node_executable for e in ld.entities if isinstance(e, Node)}
    assert {'capture_node', 'inference_node', 'rviz2'} <= execs


def test_rviz_config_shows_stack_depth_uncertainty_colorized_and_cloud():
    cfg = yaml.safe_load((ROOT / 'config' / 'depth.rviz').read_text())
    displays = cfg['Visualization Manager']['Displays']
    topics = {d['Topic']['Value']: d['Class'] for d in displays if 'Topic' in d}
    assert topics == {
        '/camera/focal_stack/image': 'rviz_default_plugins/Image',
        '/camera/depth/image': 'rviz_default_plugins/Image',
        '/camera/depth/uncertainty': 'rviz_default_plugins/Image',
        '/camera/depth/image_colorized': 'rviz_default_plugins/Image',
        '/camera/depth/points': 'rviz_default_plugins/PointCloud2',
    }
    assert cfg['Visualization Manager']['Global Options']['Fixed Frame'] == 'camera_optical_frame'


def test_fastdds_profile_has_16mb_shm_and_loopback_udp():
    ns = {'f': 'http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles'}
    root = ET.parse(ROOT / 'config' / 'fastdds.xml').getroot()
    shm = [t for t in root.iterfind('.//f:transport_descriptor', ns) if t.findtext('f:type', namespaces=ns) == 'SHM']
    assert int(shm[0].findtext('f:segment_size', namespaces=ns)) == 16 * 1024 * 1024
    addrs = [a.text for a in root.iterfind('.//f:interfaceWhiteList/f:address', ns)]
    assert addrs == ['127.0.0.1']
    part = root.find('.//f:participant', ns)
    assert part.get('is_default_profile') == 'true'
    assert part.findtext('.//f:useBuiltinTransports', namespaces=ns) == 'false'


def test_package_installs_launch_config_and_wrappers():
    setup = (ROOT / 'setup.py').read_text()
    for needle in ("glob('launch/*.py')", "glob('config/*.rviz')", "glob('config/*.xml')", "glob('config/*.yaml')"):
        assert needle in setup
    for exe in ('capture_node', 'inference_node'):
        wrapper = (ROOT / 'resource' / 'lib' / exe).read_text()
        assert f'ddfs_{exe}' in wrapper
