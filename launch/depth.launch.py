"""Launch the ddfs_ros capture and inference nodes (and optionally rviz2).

    ros2 launch ddfs_ros depth.launch.py
    ros2 launch ddfs_ros depth.launch.py camera:=v4l2 device:=/dev/video0 engine:=engines/dfv_cv_s.json
    ros2 launch ddfs_ros depth.launch.py rviz:=true namespace:=/front_camera backend:=onnxruntime

Both nodes run in ``namespace`` (default /camera) with relative topic names; their
parameters come from ``camera_params`` / ``inference_params`` (default the package's
config/camera.yaml and config/inference.yaml), and the launch arguments below
override single values.  Fast DDS gets the package's 16 MB shared-memory profile
(config/fastdds.xml) through FASTRTPS_DEFAULT_PROFILES_FILE.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare('ddfs_ros')
    config = PathJoinSubstitution([share, 'config'])
    args = [
        DeclareLaunchArgument('camera', default_value='simulated', description='simulated | v4l2',
                              choices=['simulated', 'v4l2']),
        DeclareLaunchArgument('device', default_value='/dev/video0', description='v4l2 device'),
        DeclareLaunchArgument('engine', default_value='engines/dfv_cv_s.json',
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
                     'use_sim_time': sim_time}])
    rviz = Node(
        package='rviz2', executable='rviz2', name='rviz2', output='screen',
        arguments=['-d', PathJoinSubstitution([config, 'depth.rviz'])],
        parameters=[{'use_sim_time': sim_time}],
        condition=IfCondition(LaunchConfiguration('rviz')))
    return LaunchDescription(args + [
        SetEnvironmentVariable('FASTRTPS_DEFAULT_PROFILES_FILE', LaunchConfiguration('fastdds_profile')),
        capture, inference, rviz,
    ])
