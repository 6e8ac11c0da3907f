"""NCMLoss glue: label mapping, kNN neighborhoods, precision."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from open3d._ml3d.torch.modules.losses import filter_valid_label

from backbone_reference import reference_kl, reference_ncm, softmax
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


def test_several_ignored_labels_of_both_signs():
    labels = torch.tensor([-1, 0, 1, 2, 3, 4, 2])
    indices, valid = class_indices(labels, 3, (-1, 1, np.int64(3)))
    _, stock = filter_valid_label(torch.zeros(7, 3), labels, 3, [-1, 1, 3],
                                  'cpu')
    assert valid.tolist() == [False, True, False, True, False, True, True]
    assert indices[valid].tolist() == stock.tolist() == [0, 1, 2, 1]


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


# A torch-only machine: `import open3d` fails (None in sys.modules makes it
# raise ModuleNotFoundError, as when it is not installed).
WITHOUT_OPEN3D = """
import sys
sys.modules['open3d'] = None
import torch
import ncm_plugin.ncm, ncm_plugin.losses
from ncm_plugin.losses import NCMLoss
logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.5]], requires_grad=True)
term = NCMLoss(num_classes=2).term(
    logits, torch.tensor([0, 1, 0]), torch.tensor([[1, 2], [0, 3], [0, 3]]),
    torch.tensor([3]))
term.backward()
assert torch.isfinite(logits.grad).all()
print(repr(float(term)), 'ncm_plugin.models' in sys.modules)
"""


def test_the_math_and_the_loss_run_without_open3d():
    done = subprocess.run([sys.executable, '-c', WITHOUT_OPEN3D],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    kl, registered = done.stdout.split()
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.5]])
    neighbors = np.array([[1, 2], [0, 3], [0, 3]])
    cloud, valid = np.zeros(3, dtype=int), np.ones(3, dtype=bool)
    target = reference_ncm(np.eye(2)[[0, 1, 0]], neighbors, cloud, valid)
    prediction = reference_ncm(softmax(logits), neighbors, cloud, valid)
    assert float(kl) == pytest.approx(reference_kl(target, prediction,
                                                   'forward'), rel=1e-5)
    assert registered == 'False'
