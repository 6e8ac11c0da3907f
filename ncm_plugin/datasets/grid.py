"""Streamed grid subsampling: clouds too large to hold are reduced, chunk by
chunk, into the cells of a regular grid (KPConv's first subsampling:
barycentre of the points, mean of their features, majority label, per cell).

Used by the Semantic3D conversion (text scans of up to ~500 million points)
and the LAS/LAZ conversion (airborne tiles). Memory holds one chunk plus the
cells met so far, i.e. the size of the output, whatever the size of the input.
"""
from typing import NamedTuple

import numpy as np

# New cells wait until they are as many as the merged cells (and at least this many).
MERGE_MIN_CELLS = 1_000_000
# Cell keys pack three 21-bit signed cell indices into an int64.
KEY_BITS = 21
KEY_OFFSET = 1 << (KEY_BITS - 1)


class Grid(NamedTuple):
    keys: np.ndarray  # [M] int64, sorted
    points: np.ndarray  # [M, 3 + F] float32: barycentre, then mean features
    labels: np.ndarray | None  # [M] uint8 majority label


def cell_indices(xyz, grid_size, source='points'):
    """[n, 3] int64 index of the ``grid_size`` cell of each point ``xyz [n, 3]`` (origin 0)."""
    cells = np.floor(xyz / grid_size).astype(np.int64)
    if (np.abs(cells) >= KEY_OFFSET).any():
        raise ValueError(f'{source}: coordinates beyond {KEY_OFFSET * grid_size:.0f} m from the '
                         f'origin do not fit the grid keys at grid_size {grid_size}')
    return cells


def pack_keys(cells):
    """[n, 3] cell indices -> [n] int64 keys, ordered as the (i, j, k) triples."""
    cells = cells + KEY_OFFSET
    return (cells[:, 0] << 2 * KEY_BITS) | (cells[:, 1] << KEY_BITS) | cells[:, 2]


def unpack_keys(keys):
    """[n] int64 keys -> [n, 3] int64 cell indices."""
    mask = (1 << KEY_BITS) - 1
    return np.stack([keys >> 2 * KEY_BITS, (keys >> KEY_BITS) & mask, keys & mask], 1) - KEY_OFFSET


def _sum_by(inverse, size, blocks, dtype):
    """Column sums of the rows of ``blocks`` (arrays ``[n_i, c]``, stacked) grouped by
    ``inverse [sum n_i]`` -> ``[size, c]`` of ``dtype``; one column at a time, so that the
    temporaries stay one column wide."""
    out = np.empty((size, blocks[0].shape[1]), dtype=dtype)
    for j in range(out.shape[1]):
        column = np.concatenate([b[:, j] for b in blocks]) if len(blocks) > 1 else blocks[0][:, j]
        out[:, j] = np.bincount(inverse, weights=column, minlength=size)
    return out


class GridAccumulator:
    """Per-cell sums of a stream of points: enough to give barycentres, mean features and
    majority labels of a grid subsampling without holding the points.

    A cell holds its key (int64), float32 sums of the offsets of its points from
    the cell corner, of each feature and of the count (offsets stay below
    grid_size, so float32 loses nothing that matters; integer features are exact up
    to 2^24), and uint32 votes per label (labels 0..num_labels-1). Each chunk is
    reduced to its cells; cells already merged are added in place, new ones wait in
    a list that is merged (one sort) once it holds as many cells as the merged state,
    so every cell is merged O(log) times and memory stays a small multiple of the output.
    """

    def __init__(self, grid_size, num_labels=None, source='points'):
        """num_labels: size of the label vote (None: no labels)."""
        self.grid_size, self.num_labels, self.source = grid_size, num_labels, source
        self._merged = None  # (keys [K] sorted, sums [K, 3 + F + 1] float32, votes [K, L])
        self._pending = []
        self._pending_cells = 0

    def add(self, values, labels=None):
        """Add ``values [n, 3 + F]`` (xyz, then features) and ``labels [n]`` (ints in
        0..num_labels-1); returns the cell key of each row ``[n]``."""
        cells = cell_indices(values[:, :3], self.grid_size, self.source)
        keys = pack_keys(cells)
        uniq, inverse = np.unique(keys, return_inverse=True)
        weights = np.c_[values[:, :3] - cells * self.grid_size, values[:, 3:], np.ones(len(values))]
        part = [uniq, _sum_by(inverse, len(uniq), [weights], np.float32), None]
        if self.num_labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_labels):
                raise ValueError(f'{self.source}: labels must lie in 0..{self.num_labels - 1}')
            part[2] = np.bincount(inverse * self.num_labels + labels,
                                  minlength=len(uniq) * self.num_labels
                                  ).reshape(-1, self.num_labels).astype(np.uint32)
        self._add_part(*part)
        return keys

    def _add_part(self, keys, sums, votes):
        if self._merged is not None and len(self._merged[0]):
            merged_keys, merged_sums, merged_votes = self._merged
            at = np.minimum(np.searchsorted(merged_keys, keys), len(merged_keys) - 1)
            known = merged_keys[at] == keys
            merged_sums[at[known]] += sums[known]  # keys are unique: no index repeats
            if votes is not None:
                merged_votes[at[known]] += votes[known]
            keys, sums = keys[~known], sums[~known]
            votes = None if votes is None else votes[~known]
        self._pending.append((keys, sums, votes))
        self._pending_cells += len(keys)
        merged_cells = 0 if self._merged is None else len(self._merged[0])
        if self._pending_cells >= max(merged_cells, MERGE_MIN_CELLS):
            self._merge()

    def _merge(self):
        parts = self._pending + ([self._merged] if self._merged is not None else [])
        keys = np.concatenate([p[0] for p in parts])
        uniq, inverse = np.unique(keys, return_inverse=True)
        del keys
        sums = _sum_by(inverse, len(uniq), [p[1] for p in parts], np.float32)
        votes = None
        if self.num_labels is not None:
            votes = _sum_by(inverse, len(uniq), [p[2] for p in parts], np.uint32)
        self._merged, self._pending, self._pending_cells = (uniq, sums, votes), [], 0

    def finish(self):
        """The subsampled cloud as a ``Grid``; ties of the vote go to the smaller label."""
        if self._merged is None and not self._pending:
            raise ValueError(f'{self.source}: no valid point')
        self._merge()
        keys, sums, votes = self._merged
        count = sums[:, -1:].astype(np.float64)
        points = np.c_[unpack_keys(keys) * self.grid_size + sums[:, :3] / count,
                       sums[:, 3:-1] / count].astype(np.float32)
        labels = None if votes is None else votes.argmax(axis=1).astype(np.uint8)
        return Grid(keys, points, labels)


def cells_of(keys, cells):
    """Row of ``cells [M]`` (sorted keys of a finished Grid) of every key ``[n]``."""
    return np.searchsorted(cells, keys).astype(np.int32)
