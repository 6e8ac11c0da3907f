"""NCMLoss glue: label mapping, kNN neighborhoods, precision."""
import pytest
import torch
from open3d._ml3d.torch.modules.losses import filter_valid_label

from ncm_plugin.losses import (NCMConfig, checked_class_indices, class_indices,
                               knn_neighbors)


def test_class_indices_match_open3d_filter_valid_label():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 2, 0, 5])
    ignored = [0, 3]
    indices, valid = class_indices(labels, 4, ignored)
    _, stock = filter_valid_label(torch.zeros(9, 4), labels, 4, ignored, 'cpu')
    assert valid.tolist() == [False, True, True, False, True, True, True,
                              False, True]
    assert indices[valid].tolist() == stock.tolist() == [0, 1, 2, 3, 1, 3]


def test_a_negative_ignored_label_moves_no_label():
    """ignored_label_inds: [-1] (PointTransformer, SparseConvUnet, PVCNN
    configs): -1 is invalid, every other label keeps its column."""
    labels = torch.tensor([-1, 0, 1, 2, -1, 2])
    indices, valid = class_indices(labels, 3, [-1])
    _, stock = filter_valid_label(torch.zeros(6, 3), labels, 3, [-1], 'cpu')
    assert valid.tolist() == [False, True, True, True, False, True]
    assert indices[valid].tolist() == stock.tolist() == [0, 1, 2, 2]


def test_out_of_range_labels_are_reported():
    with pytest.raises(ValueError, match='label 7'):
        checked_class_indices(torch.tensor([0, 7]), 3, [])


def test_knn_pads_small_clouds_with_the_shadow_index():
    points = torch.tensor([[0., 0, 0], [1, 0, 0], [3, 0, 0],
                           [0, 0, 0], [0, 1, 0], [0, 2, 0], [0, 4, 0],
                           [0, 8, 0]])
    neighbors = knn_neighbors(points, torch.tensor([3, 5]), k=3)
    shadow = 8
    assert neighbors.tolist()[:3] == [[1, 2, shadow], [0, 2, shadow],
                                      [1, 0, shadow]]
    assert neighbors.tolist()[3] == [4, 5, 6]
    assert neighbors.tolist()[7] == [6, 5, 4]


def test_config_defaults_live_in_one_place():
    assert NCMConfig.from_dict(None) == NCMConfig()
    assert NCMConfig.from_dict({'weight': 2}).weight == 2.0
    with pytest.raises(TypeError, match='model.ncm.k'):
        NCMConfig.from_dict({'k': 2.5})
