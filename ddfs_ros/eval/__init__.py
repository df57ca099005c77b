"""Evaluation: metrics, rosbag2 focal-stack bags, offline scoring, bag replay, reports.

- :mod:`.metrics`: ``compute_metrics(pred, gt, uncertainty=None, mask=None)``, ``aggregate``;
- :mod:`.bags`: ``read_stacks(bag)`` / ``read_bag(bag)``, ``StackBagWriter``,
  ``stack_from_messages`` (the schema of DESIGN.md section 5, no ROS needed);
- :mod:`.offline`: the node's :class:`~ddfs_ros.pipeline.DepthPipeline` over a bag;
- :mod:`.replay`: the bag through the real inference node over ROS topics;
- :mod:`.report`: Markdown/CSV/JSON tables and the image grid;
- :mod:`.protocol`: the DDFS camera-setting-shift protocol;
- command lines ``ddfs-eval`` (:mod:`.cli`) and ``ddfs-bag`` (:mod:`.bag_cli`).

Only :mod:`.replay` imports rclpy (lazily), so everything else works without ROS.
"""
