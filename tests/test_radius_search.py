"""KPConv's radius searches with a hash table sized for the points find,
row by row, exactly the support points a brute-force distance test finds
(and Open3D-ML's own batch_neighbors finds), cloud by cloud, padded with
the shadow index; each row's nearest point is the one a float32 loop over
the row finds; Open3D-ML's batcher uses them only inside the block."""
import numpy as np
import torch
from open3d._ml3d.torch.dataloaders import concat_batcher
from open3d._ml3d.torch.models.kpconv import batch_neighbors as stock

from ncm_plugin.training.radius_search import (Searches, nearest_in_rows,
                                               search, sized_hash_tables)


def rows_as_sets(neighbors, shadow):
    return [set(row[row != shadow].tolist()) for row in neighbors]


def test_the_same_neighbours_as_a_brute_force_search():
    rng = np.random.default_rng(0)
    supports = rng.uniform(0, 1, (700, 3)).astype(np.float32)
    queries = rng.uniform(0, 1, (300, 3)).astype(np.float32)
    s_batches, q_batches = [400, 300], [120, 180]
    radius = 0.15
    found = Searches().batch_neighbors(queries, supports, q_batches,
                                       s_batches, radius)
    assert found.dtype == np.int32 and found.shape[0] == 300
    expected = []
    for q, query in enumerate(queries):
        cloud = 0 if q < 120 else 1
        first = 0 if cloud == 0 else 400
        inside = first + np.flatnonzero(np.sum(
            (supports[first:first + s_batches[cloud]] - query) ** 2, 1) <
            radius ** 2)
        expected.append(set(inside.tolist()))
    assert rows_as_sets(found, 700) == expected
    assert found.shape[1] == max(len(e) for e in expected)
    assert rows_as_sets(stock(queries, supports, q_batches, s_batches,
                              radius), 700) == expected


def test_the_stock_batcher_finds_them_only_inside_the_block():
    assert concat_batcher.batch_neighbors is stock
    with sized_hash_tables() as searches:
        assert concat_batcher.batch_neighbors == searches.batch_neighbors
    assert concat_batcher.batch_neighbors is stock


def loop_nearest(supports, query, row):
    """The lowest index of the row's points nearest to query by float32
    (dx² + dy²) + dz², the shadow len(supports) for an empty row."""
    best, nearest = np.float32(np.inf), len(supports)
    for point in sorted(row):
        dx, dy, dz = supports[point] - query
        distance2 = (dx * dx + dy * dy) + dz * dz
        if distance2 < best:
            best, nearest = distance2, point
    return nearest


def near_ties(rng, count):
    """Queries 10 m apart, each with two supports at offsets that are
    permutations of each other (equally far in exact arithmetic, not always
    in float32), and integer-coordinate clouds with exact ties."""
    queries = (rng.uniform(0, 10, (count, 3)) + 10 * np.arange(count)[:, None]
               ).astype(np.float32)
    offsets = rng.uniform(-0.3, 0.3, (count, 3)).astype(np.float32)
    supports = np.concatenate([queries + offsets,
                               queries + offsets[:, [1, 2, 0]]])
    lattice_queries = rng.integers(0, 4, (300, 3)).astype(np.float32) + 1e5
    lattice = rng.integers(0, 4, (200, 3)).astype(np.float32) + 1e5
    return (np.concatenate([queries, lattice_queries]),
            np.concatenate([supports, lattice]))


def test_the_nearest_of_each_row_is_the_lowest_index_of_the_nearest():
    rng = np.random.default_rng(3)
    queries, supports = near_ties(rng, 3000)
    found = search(queries, supports, [len(queries)], [len(supports)], 1.5,
                   distances=True)
    nearest, column = nearest_in_rows(found, torch.from_numpy(queries),
                                      torch.from_numpy(supports))
    splits = found.neighbors_row_splits.numpy()
    index = found.neighbors_index.numpy()
    distance = found.neighbors_distance.numpy()
    by_search_distance = 0
    for q, query in enumerate(queries):
        row = index[splits[q]:splits[q + 1]]
        assert nearest[q] == loop_nearest(supports, query, row)
        if len(row):
            assert row[column[q]] == nearest[q]
            least = distance[splits[q]:splits[q + 1]].min()
            by_search_distance += nearest[q] != row[
                distance[splits[q]:splits[q + 1]] == least].min()
        else:
            assert nearest[q] == len(supports) and column[q] == 0
    # The search's own distances alone would pick another point in some
    # rows: the test sees the rows where the measuring again matters.
    assert by_search_distance >= 5
