"""Deterministic and exactly resumable training (CPU): the same config and
seed give bit-identical weights with 0 or 2 DataLoader workers, and a run
killed (SIGKILL) or stopped (SIGTERM) at a chosen step, then resumed, ends
with the weights of the run that was never interrupted."""
import os
import re
import shutil
import signal
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import torch

from ncm_plugin.training import checkpoints
from ncm_plugin.training.interrupts import STEP_HOOK_ENV
from tiny_training import start_run, write_cached_s3dis, write_tiny_config

RUN = 'NCMKPFCNN_S3DIS_torch'
MAX_EPOCH = 2


@pytest.fixture(scope='module')
def rooms(tmp_path_factory):
    return write_cached_s3dis(tmp_path_factory.mktemp('rooms'))


def processes_with(marker):
    """pids of the processes whose environment holds `marker`."""
    found = []
    for proc in Path('/proc').iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in \
                    (proc / 'environ').read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def train(rooms, folder, num_workers=2, hook=None, expect=0, seed=3,
          marker=None):
    """One run of the tiny config in `folder` (resuming what is there);
    returns the log's text."""
    config = write_tiny_config(folder / 'run.yml', rooms, folder / 'logs',
                               max_epoch=MAX_EPOCH, num_workers=num_workers,
                               deterministic=True)
    env = {k: v for k, v in os.environ.items() if k != STEP_HOOK_ENV}
    if hook:
        env[STEP_HOOK_ENV] = hook
    if marker:
        env['NCM_TEST_MARKER'] = marker
    log_path = folder / f'run{len(list(folder.glob("run*.log")))}.log'
    run = start_run(config, folder, log_path, env=env, args=('--seed', seed))
    assert run.wait(timeout=300) == expect, log_path.read_text()[-3000:]
    return log_path.read_text()


def final_weights(folder):
    path = folder / 'logs' / RUN / 'checkpoint' / \
        checkpoints.checkpoint_name(MAX_EPOCH)
    return checkpoints.load(path)['model_state_dict']


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


@pytest.fixture(scope='module')
def uninterrupted_run(rooms, tmp_path_factory):
    folder = tmp_path_factory.mktemp('uninterrupted')
    train(rooms, folder)
    return folder


@pytest.fixture(scope='module')
def uninterrupted(uninterrupted_run):
    return final_weights(uninterrupted_run)


def test_workers_do_not_change_the_weights(rooms, tmp_path, uninterrupted):
    train(rooms, tmp_path, num_workers=0)
    assert_same_weights(final_weights(tmp_path), uninterrupted)


def test_another_seed_gives_other_weights(rooms, tmp_path, uninterrupted):
    """(So that equal weights above are not equal by construction.)"""
    train(rooms, tmp_path, seed=4)
    weights = final_weights(tmp_path)
    assert any(not torch.equal(weights[k], uninterrupted[k])
               for k in weights)


def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(
        rooms, tmp_path, uninterrupted):
    marker = f'NCM_TEST_MARKER={uuid.uuid4()}'
    text = train(rooms, tmp_path, hook='KILL:1:1', expect=-signal.SIGKILL,
                 marker=marker.split('=')[1])
    assert f'{STEP_HOOK_ENV}: KILL after step 1 of epoch 1' in text
    # The workers (children of the fork server, not of the killed process)
    # end with it rather than linger.
    deadline = time.monotonic() + 30
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with(marker) == []
    text = train(rooms, tmp_path)
    assert 'epoch 0 done; resuming at epoch 1' in text
    assert_same_weights(final_weights(tmp_path), uninterrupted)


def test_sigterm_mid_epoch_then_resume_gives_the_same_weights(
        rooms, tmp_path, uninterrupted):
    text = train(rooms, tmp_path, hook='TERM:1:1', expect=128 + signal.SIGTERM)
    assert 'Stopped at batch 1 of 2 of epoch 1' in text
    text = train(rooms, tmp_path)
    assert '1 batch(es) of epoch 1 done; resuming there' in text
    assert_same_weights(final_weights(tmp_path), uninterrupted)


def test_kernels_on_disk_do_not_change_the_weights(rooms, tmp_path,
                                                   uninterrupted_run,
                                                   uninterrupted):
    """KPConv generates its kernel dispositions in ./kernels on first use:
    a run in a folder that already has them starts from the same model."""
    shutil.copytree(uninterrupted_run / 'kernels', tmp_path / 'kernels')
    train(rooms, tmp_path)
    assert_same_weights(final_weights(tmp_path), uninterrupted)


def test_a_killed_worker_stops_the_run_at_once_and_it_resumes(
        rooms, tmp_path, uninterrupted):
    """A worker killed (as by the OOM killer) after step 1 of epoch 1: the
    run says which loader lost it within seconds (not after
    pipeline.step_timeout), exits non-zero, and the same command resumes
    from the last checkpoint. (The dead worker's batch of epoch 1 was
    already fetched: torch notices when epoch 2 asks for more.)"""
    text = train(rooms, tmp_path, hook='KILL_WORKER:1:1', expect=1)
    ended = datetime.now()
    killed = re.search(r'(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ - \w+ - '
                       r'\S*: killing DataLoader worker', text)
    assert killed, text[-3000:]
    seconds = (ended - datetime.strptime(killed.group(1),
                                         '%Y-%m-%d %H:%M:%S')).total_seconds()
    assert seconds < 60
    last = text.strip().splitlines()[-1]
    assert last.startswith('run_pipeline: error: the training DataLoader '
                           '(2 worker(s)) lost a worker in epoch 2: '
                           'DataLoader worker (pid(s) '), last
    assert 'Traceback' not in text
    text = train(rooms, tmp_path)
    assert 'epoch 1 done; resuming at epoch 2' in text
    assert_same_weights(final_weights(tmp_path), uninterrupted)
