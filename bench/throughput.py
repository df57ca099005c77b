"""Benchmark (not a test): stacks/s end to end through ROS, per engine and resolution, CPU time split by process.

    python -m bench.throughput [--engines engines/*.json] [--sizes 128x128,320x240,640x480]
                               [--seconds 10] [--processing-width 256] [--plot bench/throughput.png]

For each engine manifest and each W x H (F = 5 rgb8 stacks of the simulated camera on
a textured plane, the same sensor at every size), the real inference node runs in its
own process (``python -m ddfs_ros.nodes.inference_node``, Fast DDS shm profile,
``processing_width``, default upsampling); this process publishes the three messages of
a stack and subscribes to ``depth/image``, ``depth/uncertainty`` and
``all_in_focus/image`` (so the node composes the all-in-focus image too).  The next
stack is sent as soon as the previous one's first output arrives (the node is then
publishing; sending earlier would replace a stack waiting in the node's latest-only
slot), so compute and transport overlap a little and nothing is dropped by design;
drops are still counted.

Reported per row:
- ``stacks/s``: stacks with all three outputs back / wall seconds;
- ``node CPU ms/stack``: the node process's user+system CPU time (``/proc/PID/stat``)
  over the run / stacks;
- ``direct CPU ms/stack``: ``DepthPipeline.run(stack, all_in_focus=True)`` called in
  this process on the same stacks, CPU time (``time.process_time``), i.e. the compute;
- ``ROS overhead``: (node CPU - direct CPU) / direct CPU: conversion, pairing, DDS and
  executor work inside the node as a fraction of compute;
- ``bench CPU ms/stack``: this process's CPU time during the ROS run (publishing and
  receiving; what a camera driver and a consumer would spend), kept separate.

Rows print as a Markdown table; ``--plot`` writes stacks/s against pixels per engine.
"""
from __future__ import annotations

import argparse
import glob
import os
import threading
import time
from pathlib import Path

from bench._ros import plane_stacks, ros_env, shut_down, stack_publishers, start_inference_node

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ('depth/image', 'depth/uncertainty', 'all_in_focus/image')


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def direct_cpu_ms(pipeline, stacks, n: int) -> float:
    pipeline.run(stacks[0], all_in_focus=True)            # this size's buffers and filters
    c = time.process_time()
    for i in range(n):
        pipeline.run(stacks[i % len(stacks)], all_in_focus=True)
    return (time.process_time() - c) / n * 1e3


def ros_run(engine: str, stacks, seconds: float, processing_width: int, namespace: str,
            backend: str = 'auto') -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from ddfs_ros import ros_io
    from ddfs_ros.nodes.common import subscription_qos

    proc = start_inference_node(namespace, {'engine': engine, 'backend': backend, 'device': 'cpu',
                                            'processing_width': processing_width, 'warmup_runs': 2})
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = Node('throughput_bench', namespace=namespace, context=ctx)
    pubs = stack_publishers(node)
    got: dict[str, set] = {t: set() for t in OUTPUTS}
    done = threading.Condition()

    def keep(topic, msg):
        with done:
            got[topic].add(ros_io.stamp_to_ns(msg.header.stamp))
            done.notify_all()

    subs = [node.create_subscription(Image, t, lambda m, t=t: keep(t, m), subscription_qos('reliable', 10))
            for t in OUTPUTS]
    # one thread: a spinning MultiThreadedExecutor burned most of a core while waiting,
    # starving the node it measures on a 2-core machine
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    msgs = [ros_io.stack_to_msgs(s, 'rgb8') for s in stacks]
    stamp = [time.time_ns()]

    def send(i):
        stamp[0] += 1_000_000
        image, info, lens = msgs[i % len(msgs)]
        st = ros_io.ns_to_stamp(stamp[0])
        for m in (image, info, lens):
            m.header.stamp = st
        pubs[0].publish(info)
        pubs[1].publish(lens)
        pubs[2].publish(image)
        return stamp[0]

    def complete(s):
        return all(s in got[t] for t in OUTPUTS)

    try:
        deadline = time.monotonic() + 180
        while not (all(p.get_subscription_count() for p in pubs) and
                   all(s.get_publisher_count() for s in subs)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('inference node did not start:\n' + (proc.stdout.read() or ''))
            time.sleep(0.05)
        for i in range(2):                                     # settle (first round trips, filter banks)
            s = send(i)
            with done:
                done.wait_for(lambda: complete(s), timeout=60)
        sent, n = [], 0
        cpu_node0, cpu_self0, t0 = proc_cpu_s(proc.pid), time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            sent.append(send(n))
            n += 1
            s = sent[-1]
            with done:
                # the next stack goes out when this one's first output is back: the node is
                # then publishing, not waiting, so the next one overlaps that without
                # replacing a stack still in the latest-only slot
                if not done.wait_for(lambda: any(s in got[t] for t in OUTPUTS), timeout=60):
                    break
        with done:
            done.wait_for(lambda: complete(sent[-1]), timeout=30)
        wall = time.perf_counter() - t0
        cpu_node, cpu_self = proc_cpu_s(proc.pid) - cpu_node0, time.process_time() - cpu_self0
        ok = sum(complete(s) for s in sent)
        return {'stacks_per_s': ok / wall, 'node_cpu_ms': cpu_node / max(ok, 1) * 1e3,
                'bench_cpu_ms': cpu_self / max(ok, 1) * 1e3, 'sent': len(sent), 'drops': len(sent) - ok,
                'wall_s': wall}
    finally:
        shut_down(executor, node, ctx, proc)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({r['engine'] for r in rows}):
        rs = sorted((r for r in rows if r['engine'] == name), key=lambda r: r['pixels'])
        ax.plot([r['pixels'] / 1e3 for r in rs], [r['stacks_per_s'] for r in rs], 'o-', label=name)
        for r in rs:
            ax.annotate(r['size'], (r['pixels'] / 1e3, r['stacks_per_s']), fontsize=7)
    ax.axhline(5, color='grey', ls=':', lw=1)
    ax.axhline(10, color='grey', ls=':', lw=1)
    ax.set_xscale('log')
    ax.set_xlabel('input kilopixels per frame (F = 5)')
    ax.set_ylabel('stacks/s through ROS (depth + unc + AiF)')
    ax.set_title('inference node throughput')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--engines', nargs='*', default=sorted(glob.glob(str(ROOT / 'engines' / '*.json'))))
    ap.add_argument('--sizes', default='128x128,320x240,640x480')
    ap.add_argument('--seconds', type=float, default=10.0, help='ROS run length per row')
    ap.add_argument('--direct', type=int, default=5, help='direct runs per row (CPU time of the compute)')
    ap.add_argument('--processing-width', type=int, default=256)
    ap.add_argument('--plot', default=str(ROOT / 'bench' / 'throughput.png'))
    ap.add_argument('--backend', default='auto',
                    help="the node's backend (default auto: the manifest's measured CPU preference)")
    args = ap.parse_args(argv)
    os.environ.update(ros_env(70))
    from ddfs_ros.engines import load_engine
    from ddfs_ros.ensemble import make_pipeline
    rows = []
    print(f'# F = 5 rgb8, processing_width {args.processing_width}, backend {args.backend} (CPU); load average '
          f'{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at start')
    print('| engine | size | stacks/s | node CPU ms/stack | direct CPU ms/stack | ROS overhead | '
          'bench CPU ms/stack | sent | drops |')
    print('|---|---|---|---|---|---|---|---|---|')
    for eng_path in args.engines:
        engine = load_engine(eng_path, backend=args.backend, device='cpu')
        print(f'# {engine.manifest.name}: {engine.description}', flush=True)
        pipeline = make_pipeline(engine, hypothesis_mode='from_focus', processing_width=args.processing_width)
        for size in args.sizes.split(','):
            w, h = (int(x) for x in size.lower().split('x'))
            stacks = plane_stacks(w, h, 3)
            direct = direct_cpu_ms(pipeline, stacks, args.direct)
            r = ros_run(eng_path, stacks, args.seconds, args.processing_width, f'/tp{os.getpid()}', args.backend)
            r.update(engine=engine.manifest.name, size=size, pixels=w * h, direct_cpu_ms=direct,
                     overhead=(r['node_cpu_ms'] - direct) / direct)
            rows.append(r)
            print(f"| {r['engine']} | {size} | {r['stacks_per_s']:.2f} | {r['node_cpu_ms']:.0f} | {direct:.0f} | "
                  f"{r['overhead'] * 100:.0f} % | {r['bench_cpu_ms']:.0f} | {r['sent']} | {r['drops']} |", flush=True)
    if args.plot:
        plot(rows, Path(args.plot))
        print(f'plot: {args.plot}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
