"""Neighborhood co-occurrence matrices (NCM) and the KL term between them.

Pure torch, no Open3D-ML imports: this is the paper's math and nothing else.

Conventions (KPConv's, stated once):
- a batch is *stacked*: the points of B clouds are concatenated, ``lengths [B]``
  says how many points each cloud has, in order;
- ``neighbors [N, K]`` holds indices into the stacked batch; the index ``N``
  (one past the last point) is the *shadow neighbor* and means "no neighbor".

For one cloud with per-point class distributions s_i and neighborhoods N(i):

    S[a, b] = sum_i sum_{j in N(i), j != i} s_i[a] * s_j[b]
    NCM     = S / sum(S)          (all zeros when the cloud has no valid pair)

Only pairs (i, j) where both points are valid and belong to the same cloud
count. The neighbor sum is a sparse (pairs x scores) product, so memory is
O(N*C + B*C*C) beside the pair list, never O(N*K*C).
"""
import warnings

import torch

# Sparse CSR is "beta" in torch; the product we use (CSR @ dense, with
# autograd on the dense side) is supported on CPU and CUDA.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

DIRECTIONS = ('forward', 'reverse')


def neighbor_matrix(neighbors, lengths, valid=None, dtype=torch.float32):
    """Sparse 0/1 adjacency [N, N] (CSR) of the pairs that count for the NCM.

    Row i holds the neighbors j of point i that are real (not the shadow),
    not i itself, in the same cloud as i, and, with `valid`, valid like i.
    Clouds are contiguous in a stacked batch, so "same cloud" is a bounds
    check per row. Computed once per batch, shared by target and prediction.

    Every row keeps its K slots (pairs that do not count are stored zeros):
    compacting them would need their number on the host, a device sync in
    every training step.
    """
    num_points = neighbors.shape[0]
    device = neighbors.device
    lengths = lengths.to(device).long()
    cloud_end = torch.repeat_interleave(torch.cumsum(lengths, 0), lengths,
                                        output_size=num_points)
    cloud_start = cloud_end - torch.repeat_interleave(lengths, lengths,
                                                      output_size=num_points)
    rows = torch.arange(num_points, device=device).unsqueeze(1)
    keep = ((neighbors >= cloud_start.unsqueeze(1)) &
            (neighbors < cloud_end.unsqueeze(1)) & (neighbors != rows))
    if valid is not None:
        padded = torch.cat([valid, valid.new_zeros(1)])
        keep &= valid.unsqueeze(1) & padded[torch.where(keep, neighbors,
                                                        num_points)]
    return _dense_rows_csr(neighbors, keep, num_points, dtype)


def _dense_rows_csr(indices, keep, num_columns, dtype):
    """CSR [N, num_columns] with K stored entries a row: indices [N, K] where
    keep [N, K], value 1, else a stored 0 (at column 0)."""
    num_rows, width = indices.shape
    crow = torch.arange(num_rows + 1, device=indices.device) * width
    columns = torch.where(keep, indices, torch.zeros_like(indices)).long()
    return torch.sparse_csr_tensor(
        crow, columns.reshape(-1), keep.reshape(-1).to(dtype),
        (num_rows, num_columns), check_invariants=False)


def pooling_matrix(pools, num_fine, dtype=torch.float32):
    """Sparse 0/1 matrix [M, num_fine] (CSR) of KPConv's pooling lists.

    pools [M, K]: for every point of a coarser layer, the points of the finer
    layer (num_fine of them) within its pooling radius; index num_fine = none.
    """
    return _dense_rows_csr(pools, pools < num_fine, num_fine, dtype)


def pool_scores(scores, valid, pools):
    """Class distributions of a coarser KPConv layer.

    A coarse point's distribution is the mean of the valid layer-0
    distributions inside its (composed) pooling region, each layer-0 point
    counted once per pooling path: the NCM of a coarser layer then compares
    the classes of regions a few subsampling cells wide.

    scores [N0, C], valid [N0] bool, pools: the pooling lists of layers
    0 .. L-1 (pools[l] [N_{l+1}, K] indexes layer l, index N_l = none).
    Returns (scores [N_L, C], valid [N_L] bool): a coarse point is valid when
    its region holds a valid point; the scores of invalid points are 0.
    """
    weights = valid.to(scores.dtype)
    sums = scores * weights.unsqueeze(1)
    for layer_pools in pools:
        matrix = pooling_matrix(layer_pools, sums.shape[0], scores.dtype)
        sums = sparse_product(matrix, sums)
        weights = sparse_product(matrix, weights.unsqueeze(1)).squeeze(1)
    pooled_valid = weights > 0
    return sums / weights.clamp_min(1e-30).unsqueeze(1), pooled_valid


def transpose_csr(matrix):
    """The transpose of a sparse CSR matrix [R, C], as CSR [C, R].

    Sorting the column indices as int32 (when they fit) is ~2x faster than
    the int64 sort torch's own transpose does."""
    crow, columns = matrix.crow_indices(), matrix.col_indices()
    num_rows, num_columns = matrix.shape
    rows = torch.repeat_interleave(
        torch.arange(num_rows, device=columns.device), crow[1:] - crow[:-1],
        output_size=columns.numel())
    keys = columns.int() if num_columns < 2**31 else columns
    order = torch.argsort(keys, stable=True)
    # Entries per column by a scatter: bincount would read the largest index
    # on the host.
    counts = torch.zeros(num_columns, dtype=torch.long, device=columns.device)
    counts.scatter_add_(0, columns, torch.ones_like(columns))
    new_crow = torch.zeros(num_columns + 1, dtype=torch.long,
                           device=columns.device)
    new_crow[1:] = torch.cumsum(counts, 0)
    return torch.sparse_csr_tensor(new_crow, rows[order],
                                   matrix.values()[order],
                                   (num_columns, num_rows),
                                   check_invariants=False)


class _NeighborSum(torch.autograd.Function):
    """adjacency @ scores with a cheaper backward: adjacency^T @ grad, the
    transpose built once by `transpose_csr` (autograd's own CSR backward
    spends most of the NCM term's time transposing)."""

    @staticmethod
    def forward(ctx, adjacency, scores):
        ctx.adjacency = adjacency
        return adjacency @ scores

    @staticmethod
    def backward(ctx, grad):
        return None, transpose_csr(ctx.adjacency) @ grad


def sparse_product(matrix, dense):
    """matrix @ dense for a sparse CSR matrix, with the cheaper backward of
    _NeighborSum when `dense` needs a gradient."""
    matrix = matrix.to(dense.dtype)
    if dense.requires_grad:
        return _NeighborSum.apply(matrix, dense)
    return matrix @ dense


def cooccurrence_from_matrix(scores, adjacency, lengths):
    """NCM of every cloud given the `neighbor_matrix` of the batch.

    scores [N, C], adjacency [N, N] sparse, lengths [B] -> [B, C, C].
    """
    num_points, num_classes = scores.shape
    num_clouds = lengths.shape[0]
    # neighbor_sum[i] = sum_{j in N(i)} s_j.
    neighbor_sum = sparse_product(adjacency, scores)
    # S_b = s_b^T @ neighbor_sum_b for every cloud b at once: each point's
    # scores go to the column block of its cloud ([N, B, C]), and one product
    # with neighbor_sum gives every S_b (no per-cloud split, which would need
    # the lengths on the host).
    cloud = torch.repeat_interleave(
        torch.arange(num_clouds, device=scores.device),
        lengths.to(scores.device).long(), output_size=num_points)
    blocks = scores.new_zeros((num_points, num_clouds, num_classes))
    blocks = blocks.index_put(
        (torch.arange(num_points, device=scores.device), cloud), scores)
    counts = (blocks.reshape(num_points, -1).T @ neighbor_sum).reshape(
        num_clouds, num_classes, num_classes)
    total = counts.sum(dim=(1, 2), keepdim=True)
    return torch.where(total > 0, counts / total.clamp_min(1e-30),
                       torch.zeros_like(counts))


def _check_inputs(scores, neighbors, lengths, valid):
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, C], got shape {tuple(scores.shape)}")
    if neighbors.dim() != 2 or neighbors.shape[0] != scores.shape[0]:
        raise ValueError(
            f"neighbors must be [N, K] with N = {scores.shape[0]} (the number "
            f"of scores), got shape {tuple(neighbors.shape)}")
    if neighbors.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"neighbors must be integer indices, got {neighbors.dtype}")
    if lengths.dim() != 1 or int(lengths.sum()) != scores.shape[0]:
        raise ValueError(
            f"lengths must be [B] and sum to N = {scores.shape[0]}, got "
            f"{lengths.tolist()}")
    if valid is not None and (valid.dtype != torch.bool or
                              valid.shape != scores.shape[:1]):
        raise ValueError(
            f"valid must be a bool tensor [N], got {valid.dtype} "
            f"{tuple(valid.shape)}")


def cooccurrence(scores, neighbors, lengths, valid=None):
    """Normalised neighborhood co-occurrence matrix of every cloud.

    Args:
        scores: [N, C] float, per-point class distributions of the stacked
            batch (one-hot labels for the target, softmax for the prediction).
        neighbors: [N, K] long, neighbor indices into the batch; N = none.
        lengths: [B] points per cloud (sums to N).
        valid: optional [N] bool; invalid points are neither centre nor
            neighbor.

    Returns:
        [B, C, C] tensor, each matrix summing to 1, or all zeros for a cloud
        without a valid pair.
    """
    _check_inputs(scores, neighbors, lengths, valid)
    adjacency = neighbor_matrix(neighbors, lengths, valid, scores.dtype)
    return cooccurrence_from_matrix(scores, adjacency, lengths)


def smooth(ncm, eps):
    """(X + eps) / (1 + C*C*eps): a strictly positive distribution for the KL."""
    num_cells = ncm.shape[-1] * ncm.shape[-2]
    return (ncm + eps) / (1.0 + num_cells * eps)


def ncm_kl(target, prediction, direction='forward', eps=1e-6):
    """KL divergence between target and predicted NCMs, mean over clouds.

    forward: KL(target || prediction); reverse: KL(prediction || target).
    Both matrices are smoothed with `smooth`. Clouds whose target has no valid
    pair (an all-zero matrix) are left out of the mean; with none left the
    result is a zero that still belongs to the graph of `prediction`.

    Args:
        target, prediction: [B, C, C].
    Returns:
        scalar tensor.
    """
    if direction not in DIRECTIONS:
        raise ValueError(
            f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if target.shape != prediction.shape or target.dim() != 3:
        raise ValueError(
            f"target and prediction must both be [B, C, C], got "
            f"{tuple(target.shape)} and {tuple(prediction.shape)}")
    # A mean over the clouds with pairs, by weights rather than by selecting
    # them (a selection needs their number on the host).
    has_pairs = (target.sum(dim=(1, 2)) > 0).to(prediction.dtype)
    p, q = smooth(target, eps), smooth(prediction, eps)
    if direction == 'reverse':
        p, q = q, p
    kl = (p * (p.log() - q.log())).sum(dim=(1, 2))
    return (kl * has_pairs).sum() / has_pairs.sum().clamp_min(1.0)
