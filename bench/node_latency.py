"""Benchmark: end-to-end stack-in -> depth-out latency over ROS vs the same core called directly.

    python -m bench.node_latency [--stacks 30] [--load 0.8] [--backend auto]

For 128 x 128 and 256 x 256 stacks of F = 5 frames (rgb8, the simulated camera on a
textured plane), against the real inference node in its own process (``python -m
ddfs_ros.nodes.inference_node``, Fast DDS with config/fastdds.xml, loopback);
ROS latency = depth/image received - focal_stack/image published (transport both
ways, message conversion, pairing, queueing, compute):

1. paired: each stack goes once over ROS (wait for its depth) and once through
   ``DepthPipeline.run(stack)`` in this process, alternately, so both see the same
   machine load (the 2 shared cores here are noisy);
   overhead ratio = (median ROS - median direct) / median direct;
2. sustained: ``--stacks`` stacks at ``--load`` x the direct throughput, open loop:
   p50/p95 latency and drops (stacks sent that never came back as depth).

Last line (the 256 x 256 run; ratio from 1, latency and drops from 2):
``node_latency ros_overhead_ratio=<r> p50_ms=<a> p95_ms=<b> drops=<n> backend=<name>``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from bench._ros import plane_stacks, ros_env, shut_down, stack_publishers, start_inference_node

ROOT = Path(__file__).resolve().parents[1]


def direct_ms(pipeline, stacks, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        pipeline.run(stacks[i % len(stacks)])
        out.append((time.perf_counter() - t) * 1e3)
    return out


def ros_run(engine_path: str, backend: str, stacks, n: int, load: float, namespace: str, pipeline,
            n_paired: int):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from ddfs_ros import ros_io
    from ddfs_ros.nodes.common import subscription_qos

    proc = start_inference_node(namespace, {'engine': engine_path, 'backend': backend, 'hypothesis_mode': 'fixed',
                                            'warmup_runs': 3})
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = Node('latency_bench', namespace=namespace, context=ctx)
    pubs = stack_publishers(node)
    received: dict[int, float] = {}
    lock = threading.Lock()

    def on_depth(msg):
        with lock:
            received[ros_io.stamp_to_ns(msg.header.stamp)] = time.perf_counter()

    node.create_subscription(Image, 'depth/image', on_depth, subscription_qos('reliable', 10))
    executor = MultiThreadedExecutor(num_threads=2, context=ctx)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    sent: dict[int, float] = {}
    stamp = [time.time_ns()]

    def send(stack):
        stamp[0] += 1_000_000
        stack.stamp_ns = stamp[0]
        msgs = ros_io.stack_to_msgs(stack, 'rgb8')
        pubs[0].publish(msgs[1])
        pubs[1].publish(msgs[2])
        t = time.perf_counter()
        pubs[2].publish(msgs[0])
        sent[stamp[0]] = t
        return stamp[0]

    try:
        deadline = time.monotonic() + 120
        while not all(p.get_subscription_count() for p in pubs):      # node up (after its warm-up)
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('inference node did not start:\n' + (proc.stdout.read() or ''))
            time.sleep(0.05)
        for _ in range(3):                                   # settle: first round trips over fresh DDS
            s = send(stacks[0])
            while s not in received and time.monotonic() < deadline:
                time.sleep(0.005)
        paired_ros, paired_direct = [], []
        for i in range(n_paired):
            s = send(stacks[i % len(stacks)])
            while s not in received and time.monotonic() < deadline + 300:
                time.sleep(0.001)
            with lock:
                paired_ros.append((received[s] - sent[s]) * 1e3)
            paired_direct.extend(direct_ms(pipeline, [stacks[i % len(stacks)]], 1))
        sent.clear()
        with lock:
            received.clear()
        period_s = statistics.median(paired_direct) / 1e3 / load     # from the warm, paired runs
        t_next = time.perf_counter()
        for i in range(n):
            send(stacks[i % len(stacks)])
            t_next += period_s
            time.sleep(max(0.0, t_next - time.perf_counter()))
        end = time.monotonic() + 10.0
        while time.monotonic() < end:
            with lock:
                if len(received) >= len(sent):
                    break
            time.sleep(0.02)
        time.sleep(0.2)
        with lock:
            lat = [(received[s] - t) * 1e3 for s, t in sent.items() if s in received]
        return paired_ros, paired_direct, lat, len(sent) - len(lat), period_s
    finally:
        shut_down(executor, node, ctx, proc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--stacks', type=int, default=30, help='stacks in the sustained run')
    ap.add_argument('--load', type=float, default=0.8, help='send rate as a fraction of the direct throughput')
    ap.add_argument('--backend', default='auto')
    ap.add_argument('--sizes', default='128,256')
    ap.add_argument('--paired', type=int, default=15, help='paired ROS/direct round trips per size')
    args = ap.parse_args(argv)
    os.environ.update(ros_env(50))
    from bench._engines import bench_engines
    from ddfs_ros.engines import load_engine
    from ddfs_ros.ensemble import make_pipeline
    engines, note = bench_engines(('ddfs',))
    path = str(engines['ddfs'])
    engine = load_engine(path, backend=args.backend)
    pipeline = make_pipeline(engine, hypothesis_mode='fixed')
    pipeline.warm_up(runs=3)
    print(f'# engine {engine.manifest.name} ({note}) {engine.manifest.height}x{engine.manifest.width} on '
          f'{engine.description}; F = 5, rgb8; ROS: inference node in its own process, Fast DDS shm profile')
    last = None
    for size in (int(s) for s in args.sizes.split(',')):
        stacks = plane_stacks(size, size, 4)
        direct_ms(pipeline, stacks, 3)        # this size's filter bank and buffers
        pr, pd, lat, drops, period = ros_run(path, args.backend, stacks, args.stacks, args.load, f'/bench{size}',
                                             pipeline, args.paired)
        d50, p50 = statistics.median(pd), statistics.median(pr)
        ratio = (p50 - d50) / d50
        r50, r95 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 95))) if lat else (float('nan'),) * 2
        print(f'size={size}x{size} F=5 paired: direct_p50_ms={d50:.2f} ros_p50_ms={p50:.2f} '
              f'overhead_ms={p50 - d50:.2f} ros_overhead_ratio={ratio:.3f} | sustained at {1 / period:.1f} Hz: '
              f'p50_ms={r50:.2f} p95_ms={r95:.2f} sent={args.stacks} drops={drops}')
        last = (ratio, r50, r95, drops)
    ratio, r50, r95, drops = last
    print(f'node_latency ros_overhead_ratio={ratio:.3f} p50_ms={r50:.2f} p95_ms={r95:.2f} drops={drops} '
          f'backend={engine.backend_name}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
