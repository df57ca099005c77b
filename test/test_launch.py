"""launch/depth.launch.py, config/depth.rviz, config/fastdds.xml and the YAML parameter files.

``launch``/``launch_ros`` are not pip-installable here: the file is checked statically
(ast) always, and loaded for real when ``launch_ros`` imports (a ROS 2 Jazzy install).
"""
from __future__ import annotations

import ast
import importlib.util
import sys
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
    assert {'capture_node', 'inference_node'} <= execs        # rviz2 comes from an OpaqueFunction (checked)


def test_rviz_config_shows_stack_depth_uncertainty_colorized_cloud_and_all_in_focus():
    cfg = yaml.safe_load((ROOT / 'config' / 'depth.rviz').read_text())
    displays = cfg['Visualization Manager']['Displays']
    topics = {d['Topic']['Value']: d['Class'] for d in displays if 'Topic' in d}
    assert topics == {
        '/camera/focal_stack/image': 'rviz_default_plugins/Image',
        '/camera/depth/image': 'rviz_default_plugins/Image',
        '/camera/depth/uncertainty': 'rviz_default_plugins/Image',
        '/camera/depth/image_colorized': 'rviz_default_plugins/Image',
        '/camera/depth/points': 'rviz_default_plugins/PointCloud2',
        '/camera/all_in_focus/image': 'rviz_default_plugins/Image',
    }
    assert cfg['Visualization Manager']['Global Options']['Fixed Frame'] == 'camera_optical_frame'


def test_fastdds_profile_has_16mb_shm_loopback_udp_and_quick_repairs():
    ns = {'f': 'http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles'}
    root = ET.parse(ROOT / 'config' / 'fastdds.xml').getroot()
    shm = [t for t in root.iterfind('.//f:transport_descriptor', ns) if t.findtext('f:type', namespaces=ns) == 'SHM']
    assert int(shm[0].findtext('f:segment_size', namespaces=ns)) == 16 * 1024 * 1024
    addrs = [a.text for a in root.iterfind('.//f:interfaceWhiteList/f:address', ns)]
    assert addrs == ['127.0.0.1']
    part = root.find('.//f:participant', ns)
    assert part.get('is_default_profile') == 'true'
    assert part.findtext('.//f:useBuiltinTransports', namespaces=ns) == 'false'
    # a reliable writer repairs a lost sample well inside the inference node's pair_timeout
    writer = root.find('.//f:data_writer', ns)
    assert writer.get('is_default_profile') == 'true'
    hb = writer.find('.//f:heartbeatPeriod', ns)
    period_s = int(hb.findtext('f:sec', namespaces=ns)) + int(hb.findtext('f:nanosec', namespaces=ns)) * 1e-9
    import yaml
    params = yaml.safe_load((ROOT / 'config' / 'inference.yaml').read_text())
    timeout_s = params['/**/inference_node']['ros__parameters'].get('pair_timeout', 1.0)
    assert period_s <= 0.2 * timeout_s


def test_package_installs_launch_config_and_wrappers():
    setup = (ROOT / 'setup.py').read_text()
    for needle in ("glob('launch/*.py')", "glob('config/*.rviz')", "glob('config/*.xml')", "glob('config/*.yaml')"):
        assert needle in setup
    for exe in ('capture_node', 'inference_node'):
        wrapper = (ROOT / 'resource' / 'lib' / exe).read_text()
        assert f'ddfs_{exe}' in wrapper


# -- the launch logic without launch installed: fake modules record what the file builds ----
class _Recorded:
    """Stands in for every launch/launch_ros class: keeps its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _Perform(_Recorded):
    """A substitution whose ``perform(context)`` reads the fake context."""

    def perform(self, context):
        return context.values[self.args[0]]


class _FindPackagePrefix(_Recorded):
    def perform(self, context):
        if self.args[0] not in context.installed:
            raise LookupError(f"package '{self.args[0]}' not found")
        return '/opt/ros/jazzy'


class _Context:
    def __init__(self, values=None, installed=(), is_shutdown=False):
        self.values = values or {}
        self.installed = set(installed)
        self.is_shutdown = is_shutdown


class _Logger:
    def __init__(self):
        self.lines = []

    def warning(self, msg):
        self.lines.append(('warning', msg))

    def error(self, msg):
        self.lines.append(('error', msg))


def _fake_launch_modules(logger):
    import types

    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    def cls(name, base=_Recorded):
        return type(name, (base,), {})

    return {
        'launch': mod('launch', LaunchDescription=cls('LaunchDescription'), Substitution=_Recorded),
        'launch.actions': mod('launch.actions', **{n: cls(n) for n in (
            'DeclareLaunchArgument', 'OpaqueFunction', 'RegisterEventHandler', 'SetEnvironmentVariable',
            'Shutdown')}),
        'launch.event_handlers': mod('launch.event_handlers', OnProcessExit=cls('OnProcessExit')),
        'launch.logging': mod('launch.logging', get_logger=lambda name: logger),
        'launch.substitutions': mod('launch.substitutions', LaunchConfiguration=cls('LaunchConfiguration', _Perform),
                                    PathJoinSubstitution=cls('PathJoinSubstitution')),
        'launch_ros': mod('launch_ros'),
        'launch_ros.actions': mod('launch_ros.actions', Node=cls('Node')),
        'launch_ros.parameter_descriptions': mod('launch_ros.parameter_descriptions',
                                                 ParameterValue=cls('ParameterValue')),
        'launch_ros.substitutions': mod('launch_ros.substitutions', FindPackagePrefix=_FindPackagePrefix,
                                        FindPackageShare=cls('FindPackageShare')),
    }


@pytest.fixture
def fake_launch(monkeypatch):
    logger = _Logger()
    for name, module in _fake_launch_modules(logger).items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location('depth_launch_fake', LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    entities = ld.args[0]
    kinds = [type(e).__name__ for e in entities]
    return mod, entities, kinds, logger


def test_launch_shuts_down_when_a_required_node_exits(fake_launch):
    mod, entities, kinds, logger = fake_launch
    nodes = {e.kwargs['executable']: e for e in entities if type(e).__name__ == 'Node'}
    assert set(nodes) == {'capture_node', 'inference_node'}
    handlers = [e.args[0] for e in entities if type(e).__name__ == 'RegisterEventHandler']
    watched = {h.kwargs['target_action'].kwargs['executable']: h.kwargs['on_exit'] for h in handlers}
    assert set(watched) == {'capture_node', 'inference_node'}
    for e in handlers:
        assert any(e.kwargs['target_action'] is n for n in nodes.values())
    # a wrong engine:= -> inference_node exits 1 -> the launch shuts down, saying why
    event = type('ProcessExited', (), {'returncode': 1})()
    actions = watched['inference_node'](event, _Context())
    assert [type(a).__name__ for a in actions] == ['Shutdown']
    reason = actions[0].kwargs['reason']
    assert 'inference_node' in reason and 'code 1' in reason
    assert ('error', reason) in logger.lines
    # during a Ctrl-C the exits are expected: no extra shutdown, no error line
    logger.lines.clear()
    assert watched['capture_node'](event, _Context(is_shutdown=True)) is None and not logger.lines


def test_launch_checks_rviz_before_starting_the_nodes(fake_launch):
    mod, entities, kinds, logger = fake_launch
    i_check = kinds.index('OpaqueFunction')
    assert i_check < min(i for i, k in enumerate(kinds) if k == 'Node')
    check = entities[i_check]
    fn, args = check.kwargs['function'], check.kwargs['args']
    assert fn(_Context({'rviz': 'false'}), *args) == []
    # rviz:=true on a machine without rviz2: a warning and no rviz node, not a dead launch
    assert fn(_Context({'rviz': 'true'}), *args) == []
    (level, text), = logger.lines
    assert level == 'warning' and 'rviz2 is not installed' in text and 'rviz:=false' in text
    started = fn(_Context({'rviz': 'true'}, installed={'rviz2'}), *args)
    assert [(n.kwargs['package'], n.kwargs['executable']) for n in started] == [('rviz2', 'rviz2')]


@pytest.mark.parametrize('camera,align,want', [('v4l2', 'auto', 'similarity'), ('simulated', 'auto', 'off'),
                                               ('v4l2', 'off', 'off'), ('simulated', 'similarity', 'similarity')])
def test_align_defaults_on_for_the_v4l2_camera(fake_launch, camera, align, want):
    mod, entities, kinds, logger = fake_launch
    declared = {e.args[0]: e.kwargs for e in entities if type(e).__name__ == 'DeclareLaunchArgument'}
    assert declared['align']['default_value'] == 'auto'
    inference = next(e for e in entities if type(e).__name__ == 'Node'
                     and e.kwargs['executable'] == 'inference_node')
    sub = inference.kwargs['parameters'][-1]['align']       # after inference_params: it wins
    assert sub.perform(_Context(values={'camera': camera, 'align': align})) == want

