"""Depth image + intrinsics -> 3D points with colour (ROS-free part of ``depth/points``).

The byte layout is the one rviz2 and ``sensor_msgs_py.point_cloud2`` use for an
``x y z rgb`` cloud: four little-endian float32 per point (16 bytes), ``rgb`` holding
the bits of the uint32 ``0x00RRGGBB``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

#: Structured dtype of one point (16 bytes, matches PointField offsets 0, 4, 8, 12).
POINT_DTYPE = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<f4')])


def depth_to_xyz(depth_m: np.ndarray, K) -> tuple[np.ndarray, np.ndarray]:
    """Back-project a depth image (m along the optical axis, REP 118) through K.

    Args:
        depth_m: H x W float, NaN/inf/<= 0 = no point.
        K: 3 x 3 (or 9 values) camera matrix of this image.

    Returns:
        (N x 3 float32 points in the camera optical frame, H x W bool mask of the
        pixels that produced them, row-major order).
    """
    k = np.asarray(K, dtype=np.float64).reshape(3, 3)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    z = np.asarray(depth_m, dtype=np.float32)
    H, W = z.shape
    mask = np.isfinite(z) & (z > 0)
    v, u = np.nonzero(mask)
    zz = z[v, u].astype(np.float64)
    x = (u - cx) / fx * zz
    y = (v - cy) / fy * zz
    return np.stack([x, y, zz], axis=1).astype(np.float32), mask


def pack_rgb(rgb_u8: np.ndarray) -> np.ndarray:
    """N x 3 uint8 (R, G, B) -> N float32 whose bits are 0x00RRGGBB (the PCL/rviz convention)."""
    c = np.asarray(rgb_u8, dtype=np.uint32)
    packed = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    return packed.astype('<u4').view('<f4')


def xyzrgb_points(depth_m: np.ndarray, K, rgb: Optional[np.ndarray] = None) -> np.ndarray:
    """Structured N-array (``POINT_DTYPE``) of the finite points, coloured by ``rgb``.

    Args:
        rgb: H x W x 3 uint8 RGB (or float in [0, 1], or H x W gray) of the same
            geometry; ``None`` = white.
    """
    xyz, mask = depth_to_xyz(depth_m, K)
    out = np.empty(xyz.shape[0], dtype=POINT_DTYPE)
    out['x'], out['y'], out['z'] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if rgb is None:
        colours = np.full((xyz.shape[0], 3), 255, dtype=np.uint8)
    else:
        img = np.asarray(rgb)
        if img.dtype != np.uint8:
            img = np.clip(np.round(img.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        if img.ndim == 2:
            img = img[..., None]
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        colours = img[mask]
    out['rgb'] = pack_rgb(colours)
    return out
