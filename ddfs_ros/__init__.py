"""ddfs_ros: deep depth from focus for ROS 2 (DDFS + DFV), runtime library and nodes."""
__version__ = '0.1.0'
