"""With DataLoader workers, each phase's first batches are built while the
phase before it runs (validation during the last training step, the next
training epoch during validation), and a checkpoint written after a
training epoch started ahead still holds the coverage the resume needs."""
import copy
import signal

import pytest
import torch

from ncm_plugin.training import checkpoints
from tiny_training import make_pipeline, write_cached_s3dis


@pytest.fixture(scope='module')
def rooms(tmp_path_factory):
    return write_cached_s3dis(tmp_path_factory.mktemp('rooms'),
                              areas=(1, 5), rooms=1)


def recorded(pipeline, events, monkeypatch, stop_in_validation=False):
    """Log each epoch start and each step of `pipeline` into `events` (the
    model's class is patched: its workers get a copy of the model)."""
    start_epoch, model_class = pipeline._start_epoch, type(pipeline.model)
    forward = model_class.forward

    def logged_start(loader, sampler, train, epoch, skip=0):
        events.append(('start', 'train' if train else 'valid', epoch))
        return start_epoch(loader, sampler, train, epoch, skip)

    def logged_forward(model, *args, **kwargs):
        events.append(('step', 'train' if model.training else 'valid'))
        if stop_in_validation and not model.training:
            pipeline.stop.signum = signal.SIGTERM  # as its handler does
        return forward(model, *args, **kwargs)

    pipeline._start_epoch = logged_start
    monkeypatch.setattr(model_class, 'forward', logged_forward)


def test_each_phase_starts_during_the_last_step_of_the_one_before(
        rooms, tmp_path, monkeypatch):
    pipeline = make_pipeline(rooms, tmp_path, num_workers=1, max_epoch=1,
                             test_after_train=False)
    events = []
    recorded(pipeline, events, monkeypatch)
    pipeline.run_train()
    train, valid = ('step', 'train'), ('step', 'valid')
    assert events == [
        ('start', 'train', 0), train, train, ('start', 'valid', 0), train,
        ('start', 'train', 1), valid,
        train, train, ('start', 'valid', 1), train, valid]


def test_without_workers_each_phase_starts_in_its_turn(rooms, tmp_path,
                                                       monkeypatch):
    pipeline = make_pipeline(rooms, tmp_path, num_workers=0, max_epoch=0,
                             test_after_train=False)
    events = []
    recorded(pipeline, events, monkeypatch)
    pipeline.run_train()
    train = ('step', 'train')
    assert events == [('start', 'train', 0), train, train, train,
                      ('start', 'valid', 0), ('step', 'valid')]


def test_a_stop_in_validation_saves_the_coverage_at_the_end_of_training(
        rooms, tmp_path, monkeypatch):
    """The next training epoch, started ahead, has drawn its first spheres
    already: the checkpoint holds the coverage from before those draws."""
    pipeline = make_pipeline(rooms, tmp_path, num_workers=1, max_epoch=1,
                             test_after_train=False)
    events = []
    recorded(pipeline, events, monkeypatch, stop_in_validation=True)
    start_ahead, ended = pipeline._start_ahead, {}

    def recording_start_ahead(loader, sampler, train, epoch):
        if train:
            ended.update(copy.deepcopy(sampler.state_dict()))
        return start_ahead(loader, sampler, train, epoch)

    pipeline._start_ahead = recording_start_ahead
    pipeline.run_train()
    assert ('start', 'train', 1) in events and events[-1] == ('step', 'valid')
    saved = checkpoints.load(pipeline.checkpoint_dir() /
                             checkpoints.checkpoint_name(0))
    assert 'steps_done' not in saved
    state = saved['random_states'][0]['samplers']['train']['coverage']
    expected = ended['coverage']['possibilities']
    now = pipeline._samplers['train'].state_dict()['coverage']['possibilities']
    assert all(torch.equal(a, b)
               for a, b in zip(state['possibilities'], expected))
    # (Not equal by construction: epoch 1's first spheres are drawn.)
    assert not all(torch.equal(a, b) for a, b in zip(expected, now))
