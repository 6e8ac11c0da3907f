"""The NCM math against brute-force references written straight from the paper."""
import math

import pytest
import torch

from conftest import TINY_MODEL, kpconv_batch, tiny_scene
from ncm_plugin.models import NCMKPFCNN
from ncm_plugin.ncm import (cooccurrence, ncm_kl, neighbor_matrix, pool_scores,
                            pooling_matrix, smooth, sparse_product,
                            transpose_csr)
from test_backbones import BACKBONES, make_batch


def brute_force_ncm(scores, neighbors, lengths, valid=None):
    """Double loop over clouds, points and neighbors: the definition, verbatim."""
    num_points, num_classes = scores.shape
    if valid is None:
        valid = torch.ones(num_points, dtype=torch.bool)
    out = []
    start = 0
    for length in lengths.tolist():
        counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        for i in range(start, start + length):
            if not valid[i]:
                continue
            for j in neighbors[i].tolist():
                if j == num_points or j == i or not (start <= j < start + length):
                    continue
                if not valid[j]:
                    continue
                counts += torch.outer(scores[i].double(), scores[j].double())
        total = counts.sum()
        out.append(counts / total if total > 0 else counts)
        start += length
    return torch.stack(out)


def random_batch(lengths, num_classes, max_neighbors, seed, cross_cloud=False):
    """Random stacked batch with shadow neighbors (index N) in every row."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    num_points = int(lengths.sum())
    scores = torch.softmax(torch.randn(num_points, num_classes, generator=gen), 1)
    starts = torch.cumsum(lengths, 0) - lengths
    cloud = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    low = starts[cloud].unsqueeze(1)
    high = (starts + lengths)[cloud].unsqueeze(1)
    if cross_cloud:
        low, high = torch.zeros_like(low), torch.full_like(high, num_points)
    neighbors = low + (torch.rand(num_points, max_neighbors, generator=gen) *
                       (high - low)).long()
    shadow = torch.rand(num_points, max_neighbors, generator=gen) < 0.3
    neighbors[shadow] = num_points
    return scores, neighbors, lengths


@pytest.mark.parametrize("lengths", [[7], [5, 9, 3], [12, 1, 6]])
def test_cooccurrence_matches_brute_force(lengths):
    scores, neighbors, lengths = random_batch(lengths, 4, 6, seed=len(lengths))
    expected = brute_force_ncm(scores, neighbors, lengths)
    got = cooccurrence(scores.double(), neighbors, lengths)
    torch.testing.assert_close(got, expected)


def test_invalid_points_are_neither_centre_nor_neighbor():
    scores, neighbors, lengths = random_batch([10, 8], 3, 5, seed=3)
    valid = torch.rand(18, generator=torch.Generator().manual_seed(0)) > 0.4
    expected = brute_force_ncm(scores, neighbors, lengths, valid)
    got = cooccurrence(scores.double(), neighbors, lengths, valid)
    torch.testing.assert_close(got, expected)
    # Changing the scores of invalid points changes nothing.
    noisy = scores.clone()
    noisy[~valid] = torch.softmax(torch.randn(int((~valid).sum()), 3), 1)
    torch.testing.assert_close(cooccurrence(noisy.double(), neighbors, lengths,
                                            valid), got)


def test_self_pairs_are_excluded():
    # Two points of different classes, each listing itself and the other.
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neighbors = torch.tensor([[0, 1], [1, 0]])
    got = cooccurrence(scores, neighbors, torch.tensor([2]))
    torch.testing.assert_close(got[0], torch.tensor([[0.0, 0.5], [0.5, 0.0]]))


def test_clouds_never_mix():
    scores, neighbors, lengths = random_batch([6, 6], 3, 8, seed=5,
                                              cross_cloud=True)
    got = cooccurrence(scores.double(), neighbors, lengths)
    torch.testing.assert_close(got, brute_force_ncm(scores, neighbors, lengths))
    alone = cooccurrence(scores[:6].double(),
                         torch.where(neighbors[:6] < 6, neighbors[:6], 6),
                         torch.tensor([6]))
    torch.testing.assert_close(got[0], alone[0])


def test_known_counts_on_a_line_of_points():
    # Labels 0 0 1 1 on a line, neighbors = previous and next point.
    one_hot = torch.eye(2)[torch.tensor([0, 0, 1, 1])]
    neighbors = torch.tensor([[1, 4], [0, 2], [1, 3], [2, 4]])
    got = cooccurrence(one_hot, neighbors, torch.tensor([4]))
    # ordered pairs: (0,1)->aa (1,0)->aa (1,2)->ab (2,1)->ba (2,3)->bb (3,2)->bb
    torch.testing.assert_close(got[0], torch.tensor([[2.0, 1.0], [1.0, 2.0]]) / 6)


def test_cloud_without_pairs_gives_zero_matrix():
    scores = torch.softmax(torch.randn(5, 3), 1)
    neighbors = torch.full((5, 4), 5)  # every neighbor is the shadow
    got = cooccurrence(scores, neighbors, torch.tensor([2, 3]))
    assert got.shape == (2, 3, 3)
    assert torch.count_nonzero(got) == 0


def test_int32_neighbors_and_empty_neighbor_lists():
    scores, neighbors, lengths = random_batch([4, 5], 3, 3, seed=2)
    got32 = cooccurrence(scores, neighbors.int(), lengths)
    torch.testing.assert_close(got32, cooccurrence(scores, neighbors, lengths))
    empty = cooccurrence(scores, neighbors[:, :0], lengths)
    assert torch.count_nonzero(empty) == 0


def test_bad_shapes_are_reported():
    scores = torch.rand(4, 3)
    with pytest.raises(ValueError, match="neighbors must be"):
        cooccurrence(scores, torch.zeros(3, 2, dtype=torch.long), torch.tensor([4]))
    with pytest.raises(ValueError, match="lengths"):
        cooccurrence(scores, torch.zeros(4, 2, dtype=torch.long), torch.tensor([3]))


def direct_kl(p, q):
    return sum(p[a, b].item() * math.log(p[a, b].item() / q[a, b].item())
               for a in range(p.shape[0]) for b in range(p.shape[1]))


def random_ncm(batch, num_classes, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, num_classes, num_classes, generator=gen,
                   dtype=torch.float64)
    return x / x.sum(dim=(1, 2), keepdim=True)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_matches_direct_formula(direction):
    eps = 1e-3
    target, prediction = random_ncm(3, 4, 0), random_ncm(3, 4, 1)
    p, q = smooth(target, eps), smooth(prediction, eps)
    if direction == "reverse":
        p, q = q, p
    expected = sum(direct_kl(p[b], q[b]) for b in range(3)) / 3
    got = ncm_kl(target, prediction, direction, eps)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_smoothed_matrices_are_distributions():
    x = smooth(random_ncm(2, 5, 4), 1e-2)
    torch.testing.assert_close(x.sum(dim=(1, 2)), torch.ones(2, dtype=x.dtype))


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_is_zero_iff_equal(direction):
    target = random_ncm(2, 3, 7)
    assert ncm_kl(target, target.clone(), direction).item() == pytest.approx(0, abs=1e-12)
    assert ncm_kl(target, random_ncm(2, 3, 8), direction).item() > 1e-4


def test_directions_differ():
    target, prediction = random_ncm(1, 3, 2), random_ncm(1, 3, 3)
    assert ncm_kl(target, prediction, "forward") != ncm_kl(target, prediction, "reverse")


def test_kl_skips_clouds_without_pairs():
    target, prediction = random_ncm(3, 3, 0), random_ncm(3, 3, 1)
    target[1] = 0
    expected = (ncm_kl(target[[0]], prediction[[0]]) +
                ncm_kl(target[[2]], prediction[[2]])) / 2
    torch.testing.assert_close(ncm_kl(target, prediction), expected)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_is_finite_on_degenerate_clouds(direction):
    # One class only, all points ignored, empty neighbor lists.
    one_class = torch.eye(3)[torch.zeros(6, dtype=torch.long)]
    line = torch.tensor([[1, 6], [0, 2], [1, 3], [2, 4], [3, 5], [4, 6]])
    lengths = torch.tensor([6])
    logits = torch.randn(6, 3, requires_grad=True)
    cases = [
        (one_class, line, None),
        (one_class, line, torch.zeros(6, dtype=torch.bool)),
        (one_class, line[:, :0], None),
    ]
    for target_scores, neighbors, valid in cases:
        target = cooccurrence(target_scores, neighbors, lengths, valid)
        prediction = cooccurrence(torch.softmax(logits, 1), neighbors, lengths, valid)
        loss = ncm_kl(target, prediction, direction)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(logits.grad).all()
        logits.grad = None


def test_unknown_direction_is_refused():
    with pytest.raises(ValueError, match="direction"):
        ncm_kl(random_ncm(1, 2, 0), random_ncm(1, 2, 1), "sideways")


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gradcheck_double_precision(direction):
    scores, neighbors, lengths = random_batch([5, 4], 3, 4, seed=11)
    labels = torch.randint(0, 3, (9,), generator=torch.Generator().manual_seed(1))
    target = cooccurrence(torch.eye(3, dtype=torch.float64)[labels], neighbors,
                          lengths)
    logits = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)

    def loss(x):
        prediction = cooccurrence(torch.softmax(x, 1), neighbors, lengths)
        return ncm_kl(target, prediction, direction, eps=1e-3)

    assert torch.autograd.gradcheck(loss, (logits,))


def test_pooled_scores_are_count_weighted_means_of_valid_points():
    scores = torch.tensor([[1., 0], [1, 0], [0.2, 0.8], [0, 1]])
    valid = torch.tensor([True, True, False, True])
    # Layer 1: three points pooling {0, 1}, {2, 3} and {2}; shadow index 4.
    pools_1 = torch.tensor([[0, 1, 4], [2, 3, 4], [2, 4, 4]])
    # Layer 2: one point pooling the first two of layer 1; shadow index 3.
    pools_2 = torch.tensor([[0, 1, 3]])
    layer_1, valid_1 = pool_scores(scores, valid, [pools_1])
    torch.testing.assert_close(layer_1, torch.tensor([[1., 0], [0, 1],
                                                      [0, 0]]))
    assert valid_1.tolist() == [True, True, False]
    layer_2, valid_2 = pool_scores(scores, valid, [pools_1, pools_2])
    # Three valid input points in the region, two of class 0.
    torch.testing.assert_close(layer_2, torch.tensor([[2 / 3, 1 / 3]]))
    assert valid_2.tolist() == [True]


def test_transpose_csr_is_the_transpose_of_the_counted_columns():
    # Neighbor matrix (rows = columns) and a pooling matrix with more rows
    # than columns (several rows park in one row of the transpose).
    _, neighbors, lengths = random_batch([6, 9], 3, 5, seed=3)
    pools = torch.randint(0, 5, (7, 3), generator=torch.Generator().manual_seed(0))
    for matrix, num_columns in ((neighbor_matrix(neighbors, lengths), 15),
                                (pooling_matrix(pools, 4), 4)):
        num_rows = matrix.shape[0]
        # Distinct values for every stored entry, the parked ones too.
        matrix = torch.sparse_csr_tensor(
            matrix.crow_indices(), matrix.col_indices(),
            torch.arange(1., matrix.values().numel() + 1), matrix.shape,
            check_invariants=True)
        transpose = checked_csr(transpose_csr(matrix))
        assert transpose.shape[0] == num_columns
        torch.testing.assert_close(transpose.to_dense()[:, :num_rows],
                                   matrix.to_dense()[:, :num_columns].T)
        # Every parked entry is parked again, none lost.
        torch.testing.assert_close(
            transpose.to_dense()[:, num_rows:].sum(),
            matrix.to_dense()[:, num_columns:].sum())


def checked_csr(matrix):
    """The matrix, rebuilt with torch's CSR invariants checked (sorted,
    distinct columns in every row)."""
    return torch.sparse_csr_tensor(matrix.crow_indices(), matrix.col_indices(),
                                   matrix.values(), matrix.shape,
                                   check_invariants=True)


def test_a_neighbor_listed_twice_counts_twice():
    neighbors = torch.tensor([[2, 1, 2, 3], [3, 3, 0, 0], [3, 3, 3, 3]])
    matrix = checked_csr(neighbor_matrix(neighbors, torch.tensor([3])))
    # Row 0: point 2 twice, point 1 once (3 is the shadow); row 1: point 0
    # twice; row 2: only shadows.
    expected = torch.zeros(3, 3)
    expected[0, 1], expected[0, 2], expected[1, 0] = 1, 2, 2
    torch.testing.assert_close(matrix.to_dense()[:, :3], expected)
    assert matrix.to_dense()[:, 3:].abs().sum() == 0


# The sparse matrices on the neighbor and pooling lists the backbones'
# batches carry, against a gather-sum written from the lists themselves.

def pairs_that_count(neighbors, lengths, valid):
    """keep [N, K]: neighbor j of point i is real, not i, in i's cloud, and
    both are valid."""
    num_points = neighbors.shape[0]
    neighbors = neighbors.long()
    cloud = torch.repeat_interleave(torch.arange(len(lengths)), lengths.long())
    cloud_of = torch.cat([cloud, torch.tensor([-1])])
    valid_of = torch.cat([valid, torch.tensor([False])])
    return ((neighbors != num_points) &
            (neighbors != torch.arange(num_points).unsqueeze(1)) &
            (cloud_of[neighbors] == cloud.unsqueeze(1)) &
            valid.unsqueeze(1) & valid_of[neighbors])


def gather_sum(dense, indices, keep):
    """[R, C]: sum over k of dense[indices[r, k]] where keep[r, k]."""
    padded = torch.cat([dense, dense.new_zeros(1, dense.shape[1])])
    gathered = padded[torch.where(keep, indices.long(), dense.shape[0])]
    return (gathered * keep.unsqueeze(2)).sum(1)


def kpconv_lists():
    """The lists of a KPConv batch: layer 0 and 1 neighbors, pools 0 -> 1."""
    model = NCMKPFCNN(**{**TINY_MODEL, 'ncm': {'weight': 1.0}})
    batch = kpconv_batch(model, [tiny_scene(0), tiny_scene(1)])['data']
    return {'KPConv layer 0': (batch.neighbors[0], batch.lengths[0]),
            'KPConv layer 1': (batch.neighbors[1], batch.lengths[1]),
            'KPConv pools 0-1': (batch.pools[0], batch.neighbors[0].shape[0])}


def backbone_lists(name, hood):
    """The lists the NCM term of a backbone reads (its ncm_layout), on the
    batch tests/test_backbones.py builds."""
    _, Model, cfg, _, _ = BACKBONES[name]
    model = Model(**cfg, ncm={'weight': 1.0, 'neighborhood': hood})
    batch = make_batch(model, name)['data']
    labels = {'RandLANet': lambda: batch['labels'],
              'PVCNN': lambda: batch['label'],
              'PointTransformer': lambda: batch.label,
              'SparseConvUnet': lambda: torch.cat(batch.label)}[name]()
    layout = model.ncm_layout(torch.zeros(*labels.shape, 3), batch)
    lists = {f'{name} {hood}': (layout.neighbors, layout.lengths)}
    if layout.pools:
        members, = layout.pools
        lists[f'{name} voxels'] = (members, labels.numel())
    return lists


@pytest.fixture(scope='module')
def real_lists():
    lists = kpconv_lists()
    for name, hood in [('RandLANet', 'model'), ('RandLANet', 'knn'),
                       ('PointTransformer', 'knn'),
                       ('SparseConvUnet', 'knn'), ('PVCNN', 'knn')]:
        lists.update(backbone_lists(name, hood))
    return lists


REAL_LISTS = ['KPConv layer 0', 'KPConv layer 1', 'KPConv pools 0-1',
              'RandLANet model', 'RandLANet knn', 'PointTransformer knn',
              'SparseConvUnet knn', 'SparseConvUnet voxels', 'PVCNN knn']


def matrix_and_reference(real_lists, name, seed):
    """(matrix, its lists [R, K], keep [R, K], number of dense rows)."""
    indices, second = real_lists[name]
    gen = torch.Generator().manual_seed(seed)
    if 'pools' in name or 'voxels' in name:
        num_fine = second
        return (pooling_matrix(indices, num_fine, torch.float64), indices,
                indices < num_fine, num_fine)
    lengths = second
    valid = torch.rand(indices.shape[0], generator=gen) > 0.2
    return (neighbor_matrix(indices, lengths, valid, torch.float64), indices,
            pairs_that_count(indices, lengths, valid), indices.shape[0])


@pytest.mark.parametrize('name', REAL_LISTS)
def test_products_and_gradients_equal_a_gather_sum(real_lists, name):
    matrix, indices, keep, num_dense = matrix_and_reference(real_lists, name, 0)
    assert keep.any() and not keep.all(), "nothing dropped: untested"
    gen = torch.Generator().manual_seed(1)
    dense = torch.rand(num_dense, 3, generator=gen, dtype=torch.float64)
    weights = torch.rand(indices.shape[0], 3, generator=gen, dtype=torch.float64)
    dense.requires_grad_()
    (sparse_product(matrix, dense) * weights).sum().backward()
    got_grad, dense.grad = dense.grad, None
    expected = gather_sum(dense, indices, keep)
    (expected * weights).sum().backward()
    torch.testing.assert_close(sparse_product(matrix, dense.detach()),
                               expected.detach())
    torch.testing.assert_close(got_grad, dense.grad)


@pytest.mark.parametrize('name', REAL_LISTS)
def test_matrices_keep_the_csr_invariants_and_balanced_rows(real_lists, name):
    matrix, indices, _, _ = matrix_and_reference(real_lists, name, 2)
    checked_csr(matrix)
    transpose = checked_csr(transpose_csr(matrix))
    width = indices.shape[1]
    # The backward's matrix: no row collects the padding of the batch.
    assert int(transpose.crow_indices().diff().max()) <= 2 * width


def test_most_slots_of_kpconv_lists_are_padding(real_lists):
    """The case the layout is for (the tests above run on it): most slots
    of KPConv's radius lists are shadows."""
    neighbors, lengths = real_lists['KPConv layer 0']
    keep = pairs_that_count(neighbors, lengths,
                            torch.ones(neighbors.shape[0], dtype=torch.bool))
    assert keep.float().mean() < 0.5
