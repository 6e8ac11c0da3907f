"""The benchmark's building blocks (the timings themselves are not tested)."""
import numpy as np
import pytest
import torch

from ncm_plugin.tools.bench.convert import same_points
from ncm_plugin.tools.bench.scaling import linear_fit, ncm_time, synthetic_batch


def test_synthetic_batches_have_kpconv_neighbor_lists():
    logits, labels, batch = synthetic_batch(1003, 7, neighbors=9, clouds=4)
    lengths = batch.lengths[0]
    assert logits.shape == (1003, 7) and labels.max() < 7
    assert lengths.tolist() == [250, 250, 250, 253]
    index = batch.neighbors[0]
    assert index.shape == (1003, 9)
    cloud = torch.repeat_interleave(torch.arange(4), lengths)
    real = index < 1003
    assert 0.8 < real.float().mean() < 0.97  # ~10 % shadow neighbors
    rows = torch.arange(1003).unsqueeze(1).expand_as(index)
    assert torch.equal(cloud[index[real]], cloud[rows[real]])
    assert ncm_time(1003, 7, neighbors=9, repeats=1) > 0


def test_linear_fit_recovers_a_line():
    slope, intercept, r2 = linear_fit([1, 2, 4, 8], [3.5, 5.5, 9.5, 17.5])
    assert (slope, intercept, r2) == pytest.approx((2.0, 1.5, 1.0))


def test_caches_compare_up_to_row_order(tmp_path):
    import pickle
    rows = np.arange(21, dtype=np.float64).reshape(3, 7)
    for name, data in (('a', rows), ('b', rows[::-1]), ('c', rows + 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'Area_1_x.pkl').write_bytes(pickle.dumps([data, []]))
    assert same_points(tmp_path / 'a', tmp_path / 'b')
    assert not same_points(tmp_path / 'a', tmp_path / 'c')
