"""How the NCM term's cost grows: with the points of a batch and with the
number of classes.

The NCM term alone (forward + backward) on synthetic stacked batches whose
neighbor lists have KPConv's shape ([N, K], shadow index N, random neighbors
inside each cloud of ~20k points, so a batch grows by more clouds as a
KPConv batch grows by more spheres). Expected: O(N*K) for the sparse
adjacency and its products (plus one sort of the N*K pairs, N*K log(N*K),
for the backward's transpose), O(N*C) for the scores, O(B*C*C) for the
matrices: linear in N up to that log factor and memory-cache effects.
"""
import time
from types import SimpleNamespace

import numpy as np
import torch

from ...losses import NCMLoss

# Points of one sampled sphere: S3DIS at 4 cm in 2 m spheres holds ~10k-40k.
SPHERE_POINTS = 20_000
POINTS = (10_000, 20_000, 50_000, 100_000, 200_000, 500_000)
CLASSES = (8, 13, 20, 30, 40)


def synthetic_batch(num_points, num_classes, neighbors=32, clouds=None,
                    device='cpu', seed=0):
    """(logits [N, C], labels [N], batch) with `clouds` equal clouds whose
    rows hold `neighbors` random indices into their own cloud, 10 % shadow.

    By default a cloud has about SPHERE_POINTS points, as KPConv batches grow
    by more spheres, not by larger ones (max_in_points bounds a sphere).
    """
    if clouds is None:
        clouds = max(1, round(num_points / SPHERE_POINTS))
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.full((clouds,), num_points // clouds, dtype=torch.long)
    lengths[-1] += num_points - int(lengths.sum())
    start = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths,
                                    lengths)
    size = torch.repeat_interleave(lengths, lengths)
    offsets = (torch.rand(num_points, neighbors, generator=gen) *
               size.unsqueeze(1)).long()
    index = start.unsqueeze(1) + offsets
    index[torch.rand(num_points, neighbors, generator=gen) < 0.1] = num_points
    logits = torch.randn(num_points, num_classes, generator=gen)
    labels = torch.randint(0, num_classes, (num_points,), generator=gen)
    batch = SimpleNamespace(neighbors=[index.to(device)],
                            lengths=[lengths.to(device)])
    return logits.to(device), labels.to(device), batch


def ncm_time(num_points, num_classes, neighbors=32, device='cpu', repeats=5):
    """Fastest of `repeats` timings of the NCM term, forward + backward
    (the minimum: the machine may be shared, and noise only adds time)."""
    logits, labels, batch = synthetic_batch(num_points, num_classes,
                                            neighbors, device=device)
    loss = NCMLoss(num_classes)
    times = []
    for _ in range(repeats + 1):
        x = logits.detach().requires_grad_(True)
        if x.device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss(x, labels, batch).backward()
        if x.device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:])  # the first one warms up


def linear_fit(sizes, seconds):
    """(slope s/point, intercept s, R^2) of seconds = intercept + slope * n."""
    slope, intercept = np.polyfit(sizes, seconds, 1)
    predicted = intercept + slope * np.asarray(sizes)
    residual = np.sum((np.asarray(seconds) - predicted)**2)
    total = np.sum((np.asarray(seconds) - np.mean(seconds))**2)
    return slope, intercept, 1 - residual / total


def run(args):
    device = args.device
    print(f"NCM term alone (forward+backward), {args.neighbors} neighbor "
          f"slots per point, clouds of ~{SPHERE_POINTS} points, {device}, "
          f"{torch.get_num_threads()} thread(s), fastest of {args.repeats}")
    print("points per batch vs time (13 classes):")
    times = []
    for n in POINTS:
        seconds = ncm_time(n, 13, args.neighbors, device, args.repeats)
        times.append(seconds)
        print(f"  {n:>7d} points  {seconds * 1e3:9.2f} ms  "
              f"{seconds / n * 1e9:7.1f} ns/point")
    slope, intercept, r2 = linear_fit(POINTS, times)
    print(f"  linear fit: {slope * 1e9:.1f} ns/point + {intercept * 1e3:.2f} "
          f"ms, R^2 = {r2:.4f}; time ratio 500k/10k = "
          f"{times[-1] / times[0]:.1f} for 50x the points; ns/point 500k/100k"
          f" = {times[-1] / 5 / times[3]:.2f} (1.00 = linear)")
    print("classes vs time (100k points):")
    by_class = []
    for c in CLASSES:
        seconds = ncm_time(100_000, c, args.neighbors, device, args.repeats)
        by_class.append(seconds)
        print(f"  {c:>3d} classes  {seconds * 1e3:9.2f} ms")
    print(f"  time ratio 40/8 classes = {by_class[-1] / by_class[0]:.2f}")
    return {'points': dict(zip(POINTS, times)),
            'classes': dict(zip(CLASSES, by_class)),
            'fit': {'ns_per_point': slope * 1e9, 'intercept_ms':
                    intercept * 1e3, 'r2': r2}}
