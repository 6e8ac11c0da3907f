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

Sparse layout (of the neighbor and pooling matrices): lists [R, K] into D
points give a CSR matrix [R, D + K] with K stored entries in every row, so
its size is known without reading the lists on the host (compacting them
would be a device sync in every training step). A row holds the columns that
count (< D), sorted, distinct, valued by how often the list names them, then
its other slots *parked*: slot s at column D + s, value 0. Columns are then
sorted and distinct in every row (torch's CSR invariants, which cuSPARSE
assumes), and the padding stays in its own row: no row of the matrix or of
its transpose collects the padding of the whole batch, which would serialise
a row-parallel GPU product there. The dense operand [D, C] is padded with K
zero rows for the product (`sparse_product`).
"""
import warnings

import torch

# Sparse CSR is "beta" in torch; the product we use (CSR @ dense, with
# autograd on the dense side) is supported on CPU and CUDA.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

DIRECTIONS = ('forward', 'reverse')


def neighbor_matrix(neighbors, lengths, valid=None, dtype=torch.float32):
    """Sparse adjacency [N, N + K] (CSR, the layout above) of the pairs that
    count for the NCM (`counted_slots`). Computed once per batch, shared by
    target and prediction.
    """
    keep = counted_slots(neighbors, lengths, valid)
    return _padded_csr(neighbors, keep, neighbors.shape[0], dtype)


def counted_slots(neighbors, lengths, valid=None):
    """[N, K] bool: slot k of point i names a neighbor j that counts: real
    (not the shadow), not i itself, in the same cloud as i, and, with
    `valid`, valid like i. Clouds are contiguous in a stacked batch, so
    "same cloud" is a bounds check per row."""
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
    return keep


def _padded_csr(indices, keep, num_columns, dtype):
    """CSR [R, num_columns + K] in the layout above: the columns indices
    [R, K] where keep [R, K], each valued by how often its row names it;
    every other slot parked.

    A first sort a row brings a column's repeats together (the kept
    columns, < num_columns, come first); the first of them stays, the others
    are parked like the dropped slots; a second sort puts the parked slots
    after the counted ones. Sorted as int32 when the columns fit (faster
    than int64).
    """
    num_rows, width = indices.shape
    device = indices.device
    index_dtype = (torch.int32 if num_columns + width < 2**31 else
                   torch.long)
    slots = torch.arange(width, device=device, dtype=index_dtype)
    columns = torch.sort(torch.where(keep, indices.to(index_dtype),
                                     num_columns + slots), dim=1).values
    counted = columns < num_columns
    counted[:, 1:] &= columns[:, 1:] != columns[:, :-1]
    columns, first_slots = torch.sort(
        torch.where(counted, columns, num_columns + slots), dim=1)
    # A counted entry's repeats followed it in the first sort, up to the
    # next counted entry (or the end of the kept ones): its value.
    counted = columns < num_columns
    ends = torch.where(_shifted(counted, False), _shifted(first_slots, 0),
                       keep.sum(1, keepdim=True))
    values = torch.where(counted, ends - first_slots, 0)
    crow = torch.arange(num_rows + 1, device=device) * width
    return torch.sparse_csr_tensor(
        crow, columns.reshape(-1).long(), values.reshape(-1).to(dtype),
        (num_rows, num_columns + width), check_invariants=False)


def _shifted(rows, fill):
    """rows [R, K] moved one slot left, `fill` in the last slot."""
    out = torch.full_like(rows, fill)
    out[:, :-1] = rows[:, 1:]
    return out


def pooling_matrix(pools, num_fine, dtype=torch.float32):
    """Sparse 0/1 matrix [M, num_fine + K] (CSR, the layout above) of
    KPConv's pooling lists.

    pools [M, K]: for every point of a coarser layer, the points of the finer
    layer (num_fine of them) within its pooling radius; index num_fine = none.
    """
    return _padded_csr(pools, pools < num_fine, num_fine, dtype)


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
    """The transpose [D, R + P] (CSR, padded) of a matrix [R, D + K] of the
    layout above: the matrix the backward multiplies.

    A counted entry (r, c) becomes (c, r). A parked entry, slot s of row r,
    is parked again: at row r mod D, column R + (r // D) * K + s. Columns
    stay distinct, and row j holds its in-degree plus the parked slots of
    rows j, j + D, ... (row j alone when R <= D, as for neighbor and
    pooling matrices), never the padding of the whole batch.

    One stable sort of the new rows, counted entries keyed before the
    parked ones of their row (key 2 * row, or 2 * row + 1), as int32 when
    the keys fit (~2x faster than the int64 sort of torch's own
    transpose). Within a key the entries keep their source order, so every
    row's columns come out sorted.
    """
    num_rows, padded_columns = matrix.shape
    values = matrix.values()
    device = values.device
    width = values.numel() // num_rows if num_rows else 0
    num_columns = padded_columns - width
    if num_columns == 0:  # no rows to transpose into, nor any gradient
        return torch.sparse_csr_tensor(
            torch.zeros(1, dtype=torch.long, device=device),
            matrix.col_indices()[:0], values[:0], (0, num_rows),
            check_invariants=False)
    blocks = -(-num_rows // num_columns)  # source rows parking in one row
    new_width = num_rows + blocks * width
    index_dtype = (torch.int32 if 2 * max(num_columns, new_width) < 2**31
                   else torch.long)
    rows = torch.arange(num_rows, device=device,
                        dtype=index_dtype).unsqueeze(1)
    slots = torch.arange(width, device=device, dtype=index_dtype)
    columns = matrix.col_indices().view(num_rows, width).to(index_dtype)
    counted = columns < num_columns
    keys = torch.where(counted, 2 * columns, 2 * (rows % num_columns) + 1)
    new_columns = torch.where(
        counted, rows, num_rows + (rows // num_columns) * width + slots)
    keys, order = torch.sort(keys.reshape(-1), stable=True)
    # Entries before each row by a search of the sorted keys: bincount
    # would read the largest index on the host.
    crow = torch.searchsorted(keys, 2 * torch.arange(
        num_columns + 1, device=device, dtype=index_dtype))
    return torch.sparse_csr_tensor(
        crow, new_columns.reshape(-1)[order].long(), values[order],
        (num_columns, new_width), check_invariants=False)


def _padded(dense, num_rows):
    """dense [D, C] with zero rows appended up to num_rows: the operand of
    a matrix of the layout above, whose parked columns index them."""
    missing = num_rows - dense.shape[0]
    if missing < 0:
        raise ValueError(f"a sparse matrix with {num_rows} columns cannot "
                         f"multiply {dense.shape[0]} rows")
    return torch.cat([dense, dense.new_zeros((missing,) + dense.shape[1:])])


class _NeighborSum(torch.autograd.Function):
    """matrix @ dense with a cheaper backward: the padded transpose
    (`transpose_csr`) @ grad (autograd's own CSR backward spends most of
    the NCM term's time transposing)."""

    @staticmethod
    def forward(ctx, matrix, dense):
        ctx.matrix = matrix
        return matrix @ _padded(dense, matrix.shape[1])

    @staticmethod
    def backward(ctx, grad):
        transpose = transpose_csr(ctx.matrix)
        return None, transpose @ _padded(grad, transpose.shape[1])


def sparse_product(matrix, dense):
    """matrix @ dense for a sparse CSR matrix [R, D + K] of the layout above
    and dense [D, C] -> [R, C] (the parked columns multiply zero rows), with
    the cheaper backward of _NeighborSum when `dense` needs a gradient."""
    matrix = matrix.to(dense.dtype)
    if dense.requires_grad:
        return _NeighborSum.apply(matrix, dense)
    return matrix @ _padded(dense, matrix.shape[1])


def cooccurrence_from_matrix(scores, adjacency, lengths):
    """NCM of every cloud given the `neighbor_matrix` of the batch.

    scores [N, C], adjacency [N, N + K] sparse, lengths [B] -> [B, C, C].
    """
    # neighbor_sum[i] = sum_{j in N(i)} s_j.
    return cooccurrence_from_sums(scores, sparse_product(adjacency, scores),
                                  lengths)


def cooccurrence_from_sums(scores, neighbor_sum, lengths):
    """NCM of every cloud from each point's sum of its neighbors' scores.

    scores [N, C], neighbor_sum [N, C], lengths [B] -> [B, C, C].
    """
    num_points, num_classes = scores.shape
    num_clouds = lengths.shape[0]
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
