"""Independent references for the NCM of any backbone: plain numpy loops over
points and neighbors, written from the paper's definition (not from
ncm_plugin's functions)."""
import numpy as np


def class_columns(labels, ignored):
    """(columns [N], valid [N]) as Open3D-ML's filter_valid_label: ignored
    labels are invalid; a label above an ignored label >= 0 moves down."""
    labels = np.asarray(labels).reshape(-1)
    valid = ~np.isin(labels, ignored)
    columns = labels - sum((labels > i) for i in ignored if i >= 0)
    return np.where(valid, columns, 0), valid


def one_hot(columns, valid, num_classes):
    out = np.zeros((len(columns), num_classes))
    out[np.arange(len(columns))[valid], columns[valid]] = 1.0
    return out


def softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def reference_ncm(scores, neighbors, cloud, valid):
    """[B, C, C]: for every cloud, sum over valid points i and their valid
    neighbors j != i of the same cloud of outer(s_i, s_j), normalised.

    scores [N, C], neighbors [N, K] (index N = none), cloud [N] cloud ids
    0..B-1, valid [N] bool."""
    num_points, num_classes = scores.shape
    num_clouds = int(cloud.max()) + 1
    counts = np.zeros((num_clouds, num_classes, num_classes))
    for i in range(num_points):
        if not valid[i]:
            continue
        for j in neighbors[i]:
            if j == num_points or j == i or cloud[j] != cloud[i] or \
                    not valid[j]:
                continue
            counts[cloud[i]] += np.outer(scores[i], scores[j])
    totals = counts.sum(axis=(1, 2), keepdims=True)
    return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), 0)


def reference_kl(target, prediction, direction, eps=1e-6):
    """Mean over clouds with pairs of KL(target || prediction) (forward) or
    KL(prediction || target) (reverse), both smoothed by eps."""
    cells = target.shape[1] * target.shape[2]
    p = (target + eps) / (1 + cells * eps)
    q = (prediction + eps) / (1 + cells * eps)
    if direction == 'reverse':
        p, q = q, p
    kl = (p * (np.log(p) - np.log(q))).sum(axis=(1, 2))
    used = target.sum(axis=(1, 2)) > 0
    return kl[used].mean() if used.any() else 0.0


def brute_knn_distances(points, cloud, k):
    """[N, k] sorted distances of every point's k nearest other points of
    its cloud (tie-proof way to check a kNN list)."""
    out = np.zeros((len(points), k))
    for i in range(len(points)):
        others = np.flatnonzero((cloud == cloud[i]) &
                                (np.arange(len(points)) != i))
        d = np.linalg.norm(points[others] - points[i], axis=1)
        out[i] = np.sort(d)[:k]
    return out
