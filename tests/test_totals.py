"""Epoch totals on the device, and a non-finite loss that stops the run at
once, naming the epoch, the step and the term, with no checkpoint written."""
import numpy as np
import pytest
import torch

from tiny_training import make_pipeline, write_cached_s3dis
from ncm_plugin.training.totals import EpochTotals, NonFiniteLoss


def test_means_and_confusion_match_a_direct_count():
    totals = EpochTotals(3, torch.device('cpu'), 'training', 4)
    losses = [0.5, 1.5, 2.5]
    labels = [torch.tensor([0, 1, 2, 2]), torch.tensor([1, 1]),
              torch.tensor([0])]
    predictions = [torch.tensor([0, 2, 2, 1]), torch.tensor([1, 0]),
                   torch.tensor([2])]
    for step, (loss, label, prediction) in enumerate(zip(losses, labels,
                                                         predictions)):
        totals.add(step, {'loss': torch.tensor(loss), 'ncm': torch.tensor(1.0)})
        totals.add_predictions(torch.nn.functional.one_hot(prediction, 3).float(),
                               label)
    totals.check()
    names, sums = totals.local_sums()
    assert names == ['loss', 'ncm'] and sums == [(4.5, 3), (3.0, 3)]
    expected = np.zeros((3, 3), dtype=np.int64)
    for label, prediction in zip(labels, predictions):
        for a, b in zip(label.tolist(), prediction.tolist()):
            expected[a, b] += 1
    assert np.array_equal(totals.confusion(), expected)


def test_the_first_non_finite_step_and_term_are_named():
    totals = EpochTotals(2, torch.device('cpu'), 'validation', 7)
    totals.add(0, {'cross_entropy': torch.tensor(1.0)})
    totals.add(1, {'cross_entropy': torch.tensor(1.0),
                   'ncm': torch.tensor(float('inf'))})
    totals.add(2, {'cross_entropy': torch.tensor(float('nan'))})
    with pytest.raises(NonFiniteLoss, match='the ncm loss term is not finite '
                       'at validation step 1 of epoch 7'):
        totals.check()


def test_a_nan_loss_stops_training_without_a_checkpoint(tmp_path, monkeypatch):
    rooms = write_cached_s3dis(tmp_path / 'rooms', areas=(1, 5), rooms=1)
    pipeline = make_pipeline(rooms, tmp_path, max_epoch=2)
    model = pipeline.model
    stock_get_loss = type(model).get_loss
    steps = []

    def get_loss(self, *args):
        loss, labels, scores = stock_get_loss(self, *args)
        steps.append(len(steps))
        if self.training and len(steps) == 2:
            self.loss_terms = {**self.loss_terms,
                               'ncm': torch.tensor(float('nan'))}
        return loss, labels, scores

    monkeypatch.setattr(type(model), 'get_loss', get_loss)
    with pytest.raises(NonFiniteLoss, match='the ncm loss term is not finite '
                       'at training step 1 of epoch 0'):
        pipeline.run_train()
    assert not list(tmp_path.rglob('ckpt_*.pth'))
