"""Launch the ddfs_ros capture and inference nodes (and optionally rviz2).

    ros2 launch ddfs_ros depth.launch.py
    ros2 launch ddfs_ros depth.launch.py camera:=v4l2 device:=/dev/video0 engine:=engines/ddfs_s.json
    ros2 launch ddfs_ros depth.launch.py rviz:=true namespace:=/front_camera backend:=onnxruntime

Both nodes run in ``namespace`` (default /camera) with relative topic names; their
parameters come from ``camera_params`` / ``inference_params`` (default the package's
config/camera.yaml and config/inference.yaml), and the launch arguments below
override single values.  Fast DDS gets the package's 16 MB shared-memory profile
(config/fastdds.xml) through FASTRTPS_DEFAULT_PROFILES_FILE.

Failure behaviour (issue 12):
- ``rviz:=true`` without rviz2 installed: a warning, and the launch goes on without it.
  The check runs before any node starts, so nothing is left behind by a launch that
  cannot resolve ``rviz2``.
- ``capture_node`` and ``inference_node`` are both required: when either exits (wrong
  ``engine:=``, bad parameter, crash), the launch logs which one and its exit code and
  shuts down, stopping the other one too.
"""
from launch import LaunchDescription, Substitution
from launch.actions import (DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, SetEnvironmentVariable,
                            Shutdown)
from launch.event_handlers import OnProcessExit
from launch.logging import get_logger
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackagePrefix, FindPackageShare


def align_for(camera: str, align: str) -> str:
    """The inference node's ``align`` for a launch: ``auto`` means ``similarity`` with a V4L2
    camera (focus breathing and a moving camera misalign its frames) and ``off`` with the
    simulated one (its frames line up); ``off`` / ``similarity`` are taken as given."""
    if align != 'auto':
        return align
    return 'similarity' if camera == 'v4l2' else 'off'


class _AlignFor(Substitution):
    """:func:`align_for` of the ``camera`` and ``align`` launch arguments, at launch time."""

    def describe(self) -> str:
        return 'align_for(camera, align)'

    def perform(self, context) -> str:
        return align_for(LaunchConfiguration('camera').perform(context), LaunchConfiguration('align').perform(context))


def exit_reason(name: str, returncode) -> str:
    """The log line and Shutdown reason when required node ``name`` exits with ``returncode``."""
    how = 'exited normally' if returncode == 0 else f'exited with code {returncode}'
    hint = ' (its FATAL line above says why)' if returncode not in (0, None) else ''
    return f'required node {name} {how}{hint}; shutting down the launch'


def rviz_missing_reason(error: Exception) -> str:
    """Warning when ``rviz:=true`` but the rviz2 package cannot be found."""
    return (f'rviz:=true, but rviz2 is not installed ({error}); starting without it. '
            'Install it (apt install ros-$ROS_DISTRO-rviz2) or use rviz:=false.')


def _rviz(context, config, sim_time):
    """rviz2 when asked for and installed; a warning instead of a launch that dies half-started."""
    if LaunchConfiguration('rviz').perform(context) != 'true':
        return []
    try:
        FindPackagePrefix('rviz2').perform(context)
    except Exception as e:  # noqa: BLE001 - PackageNotFoundError and friends from ament_index
        get_logger('depth.launch').warning(rviz_missing_reason(e))
        return []
    return [Node(package='rviz2', executable='rviz2', name='rviz2', output='screen',
                 arguments=['-d', PathJoinSubstitution([config, 'depth.rviz'])],
                 parameters=[{'use_sim_time': sim_time}])]


def _shutdown_when_exits(node: Node, name: str) -> RegisterEventHandler:
    def on_exit(event, context):
        if getattr(context, 'is_shutdown', False):
            return None              # the launch is already stopping (Ctrl-C): nothing to add
        reason = exit_reason(name, getattr(event, 'returncode', None))
        get_logger('depth.launch').error(reason)
        return [Shutdown(reason=reason)]
    return RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit))


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare('ddfs_ros')
    config = PathJoinSubstitution([share, 'config'])
    args = [
        DeclareLaunchArgument('camera', default_value='simulated', description='simulated | v4l2',
                              choices=['simulated', 'v4l2']),
        DeclareLaunchArgument('device', default_value='/dev/video0', description='v4l2 device'),
        DeclareLaunchArgument('align', default_value='auto',
                              description='inference align (overrides inference_params): auto = similarity '
                                          'with camera:=v4l2, off with the simulated camera',
                              choices=['auto', 'off', 'similarity']),
        DeclareLaunchArgument('engine', default_value='engines/ddfs_s.json',
                              description='engine manifest (.json), relative to the package share dir or absolute'),
        DeclareLaunchArgument('backend', default_value='auto', description='auto | tensorrt | onnxruntime | torch',
                              choices=['auto', 'tensorrt', 'onnxruntime', 'torch']),
        DeclareLaunchArgument('camera_params', default_value=PathJoinSubstitution([config, 'camera.yaml']),
                              description='capture node parameter file'),
        DeclareLaunchArgument('inference_params', default_value=PathJoinSubstitution([config, 'inference.yaml']),
                              description='inference node parameter file'),
        DeclareLaunchArgument('namespace', default_value='/camera', description='namespace of both nodes'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='use /clock (bag replay)'),
        DeclareLaunchArgument('rviz', default_value='false', description='start rviz2 with config/depth.rviz',
                              choices=['true', 'false']),
        DeclareLaunchArgument('fastdds_profile', default_value=PathJoinSubstitution([config, 'fastdds.xml']),
                              description='Fast DDS XML profile (16 MB shared memory, UDP on 127.0.0.1)'),
    ]
    ns = LaunchConfiguration('namespace')
    sim_time = ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool)
    capture = Node(
        package='ddfs_ros', executable='capture_node', name='capture_node', namespace=ns, output='screen',
        parameters=[LaunchConfiguration('camera_params'),
                    {'camera': LaunchConfiguration('camera'), 'device': LaunchConfiguration('device'),
                     'use_sim_time': sim_time}])
    inference = Node(
        package='ddfs_ros', executable='inference_node', name='inference_node', namespace=ns, output='screen',
        parameters=[LaunchConfiguration('inference_params'),
                    {'engine': LaunchConfiguration('engine'), 'backend': LaunchConfiguration('backend'),
                     'align': _AlignFor(), 'use_sim_time': sim_time}])
    return LaunchDescription(args + [
        SetEnvironmentVariable('FASTRTPS_DEFAULT_PROFILES_FILE', LaunchConfiguration('fastdds_profile')),
        # Checks first, processes last: a launch that fails while resolving an action must
        # not have started (and orphaned) the nodes already.
        OpaqueFunction(function=_rviz, args=[config, sim_time]),
        _shutdown_when_exits(capture, 'capture_node'),
        _shutdown_when_exits(inference, 'inference_node'),
        capture, inference,
    ])
