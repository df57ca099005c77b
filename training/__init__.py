"""Training of the ddfs_ros networks (DDFS, DFV, dfv_cv): models, data, train, export, engines.

Builds on :mod:`ddfs_ros` (renderer, scenes, cost volume); nothing in ``ddfs_ros``
imports this package (the robot runs exported engines, not training code).
"""
