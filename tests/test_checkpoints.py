"""Crash-safe checkpoints, resume, and SIGINT/SIGTERM.

The end-to-end tests run scripts/run_pipeline.py on tiny rooms
(tiny_training.py) and kill it for real.
"""
import logging
import os
import re
import signal
import time

import numpy as np
import pytest
import torch

from ncm_plugin.training import checkpoints
from tiny_training import start_run, write_cached_s3dis, write_tiny_config

RUN = 'NCMKPFCNN_S3DIS_torch'
RESUMED = re.compile(r'resuming at epoch (\d+)')


# -- the files ------------------------------------------------------------------
def test_atomic_write_leaves_only_the_final_file(tmp_path):
    path = tmp_path / checkpoints.checkpoint_name(3)
    checkpoints.write_atomic({'epoch': 3, 'w': torch.arange(4)}, path)
    assert os.listdir(tmp_path) == ['ckpt_00003.pth']
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert checkpoints.load(path)['w'].tolist() == [0, 1, 2, 3]


def test_unreadable_newest_checkpoint_is_skipped_with_a_warning(tmp_path,
                                                                caplog):
    for epoch in (1, 2):
        checkpoints.write_atomic({'epoch': epoch},
                                 tmp_path / checkpoints.checkpoint_name(epoch))
    newest = tmp_path / checkpoints.checkpoint_name(3)
    checkpoints.write_atomic({'epoch': 3, 'w': torch.zeros(1000)}, newest)
    data = newest.read_bytes()
    newest.write_bytes(data[:len(data) // 2])  # a copy cut short
    with caplog.at_level(logging.WARNING):
        path, ckpt = checkpoints.load_latest_readable(tmp_path)
    assert path.name == 'ckpt_00002.pth' and ckpt['epoch'] == 2
    assert 'Skipping unreadable checkpoint' in caplog.text
    assert 'ckpt_00003.pth' in caplog.text


def test_only_the_last_k_are_kept(tmp_path):
    for epoch in range(5):
        checkpoints.write_atomic({'epoch': epoch},
                                 tmp_path / checkpoints.checkpoint_name(epoch))
    removed = checkpoints.prune(tmp_path, 2)
    assert [p.name for p in removed] == [checkpoints.checkpoint_name(e)
                                         for e in range(3)]
    assert [e for e, _ in checkpoints.list_checkpoints(tmp_path)] == [3, 4]
    assert checkpoints.prune(tmp_path, None) == []


def test_random_states_round_trip():
    state = checkpoints.random_state()
    expected = (torch.rand(3), np.random.rand(3), __import__('random').random())
    torch.rand(5), np.random.rand(5)
    checkpoints.set_random_state(state)
    again = (torch.rand(3), np.random.rand(3), __import__('random').random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


# -- killed runs ------------------------------------------------------------------
@pytest.fixture(scope='module')
def rooms(tmp_path_factory):
    return write_cached_s3dis(tmp_path_factory.mktemp('rooms'))


def wait_for(log_path, pattern, process, timeout=120, after=0):
    """Block until `pattern` appears in the log (past its first `after`
    characters); fail if the run ends first. Returns the log's text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text() if log_path.exists() else ''
        if re.search(pattern, text[after:]):
            return text
        if process.poll() is not None:
            raise AssertionError(f"run ended ({process.returncode}) before "
                                 f"{pattern!r}:\n{text[-3000:]}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"no {pattern!r} within {timeout} s")


# Moments of an epoch a kill can aim at: its start, its first batch, the
# end of its validation, its checkpoint.
PHASES = ('=== EPOCH', 'Training spheres', 'Loss train', 'checkpoint saved')


def completed_epochs(folder):
    return [epoch for epoch, _ in checkpoints.list_checkpoints(folder)]


def check_resumed_from(log_text, completed):
    """The run resumed right after the newest completed checkpoint."""
    if not completed:
        assert 'Initializing from scratch' in log_text
    else:
        assert RESUMED.search(log_text), log_text[-3000:]
        assert int(RESUMED.search(log_text).group(1)) == max(completed) + 1


def test_sigkill_at_random_moments_then_resume_reaches_the_last_epoch(
        rooms, tmp_path):
    """Four kills: early in the first run; at a random phase of an epoch
    (plus a random delay) after each later run saved a checkpoint; and one
    inside a checkpoint write. Every restart resumes right after the newest
    checkpoint completed before the kill. (Kills aim at log events rather
    than at times, so that a faster machine does not finish the run first.)
    """
    max_epoch = 10  # room for four kills even when epochs are fast
    config = write_tiny_config(tmp_path / 'run.yml', rooms, tmp_path / 'logs',
                               max_epoch=max_epoch, keep_checkpoints=2)
    folder = tmp_path / 'logs' / RUN / 'checkpoint'
    rng = np.random.default_rng(7)
    completed = []
    plans = ['early', 'random phase', 'during checkpoint write',
             'random phase']
    for attempt, plan in enumerate(plans):
        log_path = tmp_path / f'attempt{attempt}.log'
        env = dict(os.environ)
        if plan == 'during checkpoint write':
            env[checkpoints.PAUSE_ENV] = '60'
        run = start_run(config, tmp_path, log_path, env=env)
        text = wait_for(log_path, 'Started training', run)
        check_resumed_from(text, completed)
        if plan == 'during checkpoint write':
            wait_for(log_path, 'Checkpoint write paused', run)
            assert list(folder.glob('.ckpt_*.tmp'))
        elif plan == 'random phase':
            text = wait_for(log_path, 'checkpoint saved', run)
            wait_for(log_path, re.escape(rng.choice(PHASES)), run,
                     after=len(text))
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            time.sleep(rng.uniform(0.0, 0.5))
        run.send_signal(signal.SIGKILL)
        assert run.wait(timeout=30) == -signal.SIGKILL
        completed = completed_epochs(folder)
        # Whatever the moment, every checkpoint left behind loads.
        for _, path in checkpoints.list_checkpoints(folder):
            checkpoints.load(path)
        assert len(completed) <= 2
    assert completed and max(completed) < max_epoch

    log_path = tmp_path / 'final.log'
    run = start_run(config, tmp_path, log_path)
    assert run.wait(timeout=300) == 0, log_path.read_text()[-3000:]
    text = log_path.read_text()
    check_resumed_from(text, completed)
    assert f'=== EPOCH {max_epoch}/{max_epoch} ===' in text
    assert completed_epochs(folder)[-1] == max_epoch
    assert not list(folder.glob('.ckpt_*.tmp'))
    final = checkpoints.load(folder / checkpoints.checkpoint_name(max_epoch))
    assert final['epoch'] == max_epoch and 'steps_done' not in final
    assert final['best']['metric'] == 'validation mIoU'
    # The schedule continued: one scheduler step per epoch in total.
    assert final['scheduler_state_dict']['last_epoch'] == max_epoch + 1


def test_sigterm_saves_a_checkpoint_and_the_run_continues_there(rooms,
                                                                tmp_path):
    config = write_tiny_config(tmp_path / 'run.yml', rooms, tmp_path / 'logs',
                               max_epoch=2)
    folder = tmp_path / 'logs' / RUN / 'checkpoint'
    log_path = tmp_path / 'first.log'
    run = start_run(config, tmp_path, log_path)
    wait_for(log_path, r'=== EPOCH 1/2 ===', run)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 128 + signal.SIGTERM
    text = log_path.read_text()
    assert 'SIGTERM received' in text and 'Traceback' not in text
    assert 'run the same command to resume' in text
    path, ckpt = checkpoints.load_latest_readable(folder)
    assert path.name == 'ckpt_00001.pth' and ckpt['epoch'] == 1

    log_path = tmp_path / 'second.log'
    run = start_run(config, tmp_path, log_path)
    assert run.wait(timeout=300) == 0, log_path.read_text()[-3000:]
    text = log_path.read_text()
    if 'steps_done' in ckpt:  # stopped inside epoch 1: it is finished first
        assert f"{ckpt['steps_done']} batch(es) of epoch 1 done" in text
        assert '=== EPOCH 1/2 ===' in text
    else:  # stopped at the end of epoch 1
        assert 'resuming at epoch 2' in text
        assert '=== EPOCH 1/2 ===' not in text
    assert '=== EPOCH 2/2 ===' in text and '=== EPOCH 0/2 ===' not in text
