"""ddfs_ros: deep depth from focus for ROS 2.

Works both under ``colcon build`` (ament_python) and as a plain ``pip install .``
into a venv holding the ROS 2 Jazzy wheels.  ``data_files`` installs the ament
index marker, package.xml, launch/config/engines and two tiny sh wrappers in
``lib/ddfs_ros`` so that ``launch_ros`` finds ``Node(package='ddfs_ros',
executable='inference_node')`` once ``AMENT_PREFIX_PATH`` points at the prefix.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'ddfs_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml') + glob('config/*.xml') + glob('config/*.rviz')),
        (f'share/{PACKAGE}/engines', glob('engines/*.onnx') + glob('engines/*.json') + glob('engines/*.pt2')),
        (f'lib/{PACKAGE}', glob('resource/lib/*')),
    ],
    install_requires=[
        'numpy', 'scipy', 'numba', 'scikit-image', 'opencv-python-headless', 'torch>=2.1',
        'onnxruntime', 'rosbags', 'tqdm', 'matplotlib', 'pyyaml',
    ],
    extras_require={'test': ['pytest'], 'train': ['onnx']},
    zip_safe=True,
    maintainer='ddfs_ros developers',
    maintainer_email='ddfs_ros@example.com',
    description='Deep depth from focus (DDFS / DFV) for ROS 2 with a GPU cost-volume preprocessor',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'ddfs_capture_node = ddfs_ros.nodes.capture_node:main',
            'ddfs_inference_node = ddfs_ros.nodes.inference_node:main',
            'ddfs-run = ddfs_ros.nodes.run:main',
            'ddfs-eval = ddfs_ros.eval.cli:main',
            'ddfs-bag = ddfs_ros.eval.bag_cli:main',
            'ddfs-calibrate = ddfs_ros.eval.calibrate_cli:main',
            'ddfs-plan = ddfs_ros.plan_cli:main',
        ],
    },
)
