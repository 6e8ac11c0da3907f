"""The NCM products as ncm.py built them up to commit ce8c1ed, kept to
compare before and after on a GPU: every dropped neighbour slot is a stored
zero at column 0, so the transpose the backward multiplies holds all the
padding of the batch in its row 0 (review gpu-2026-12-01 §5-6). Not used by
training. Same signatures as ncm.py's functions of the same names.
"""
import torch

from ...ncm import cooccurrence_from_sums, counted_slots


def neighbor_matrix(neighbors, lengths, valid=None, dtype=torch.float32):
    """Sparse 0/1 adjacency [N, N] (CSR), K stored entries a row (the slots
    that count are ncm.py's)."""
    return _dense_rows_csr(neighbors, counted_slots(neighbors, lengths, valid),
                           neighbors.shape[0], dtype)


def _dense_rows_csr(indices, keep, num_columns, dtype):
    """CSR [N, num_columns]: indices [N, K] where keep, value 1, else a
    stored 0 at column 0."""
    num_rows, width = indices.shape
    crow = torch.arange(num_rows + 1, device=indices.device) * width
    columns = torch.where(keep, indices, torch.zeros_like(indices)).long()
    return torch.sparse_csr_tensor(
        crow, columns.reshape(-1), keep.reshape(-1).to(dtype),
        (num_rows, num_columns), check_invariants=False)


def transpose_csr(matrix):
    """The transpose of a sparse CSR matrix [R, C], as CSR [C, R]."""
    crow, columns = matrix.crow_indices(), matrix.col_indices()
    num_rows, num_columns = matrix.shape
    rows = torch.repeat_interleave(
        torch.arange(num_rows, device=columns.device), crow[1:] - crow[:-1],
        output_size=columns.numel())
    keys = columns.int() if num_columns < 2**31 else columns
    order = torch.argsort(keys, stable=True)
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
    """adjacency @ scores; backward adjacency^T @ grad (transpose_csr)."""

    @staticmethod
    def forward(ctx, adjacency, scores):
        ctx.adjacency = adjacency
        return adjacency @ scores

    @staticmethod
    def backward(ctx, grad):
        return None, transpose_csr(ctx.adjacency) @ grad


def sparse_product(matrix, dense):
    matrix = matrix.to(dense.dtype)
    if dense.requires_grad:
        return _NeighborSum.apply(matrix, dense)
    return matrix @ dense


def cooccurrence_from_matrix(scores, adjacency, lengths):
    """scores [N, C], adjacency [N, N] sparse, lengths [B] -> [B, C, C]
    (the counting itself is ncm.py's)."""
    return cooccurrence_from_sums(scores, sparse_product(adjacency, scores),
                                  lengths)
