"""ROS 2 nodes (thin adapters): capture_node, inference_node, and the in-process runner."""
