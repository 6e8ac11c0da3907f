"""Distributed training under torchrun on the CPU (gloo, 2 processes)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import tiny_run_overrides
from ncm_plugin.datasets.s3dis.convert import convert_s3dis
from ncm_plugin.datasets.s3dis.synthetic import write_demo_s3dis
from ncm_plugin.training.distributed import Ranks, adopt_primary_address, rank_seed
from ncm_plugin.training import checkpoints
from ncm_plugin.training.interrupts import STEP_HOOK_ENV
from tiny_training import REPO, SCRIPT

RUNNER = REPO / 'tests' / 'distributed_run.py'
CONFUSION = re.compile(r'Validation confusion matrix, epoch 0 .*?: (\[\[.*\]\])')


def run_args(data, tmp_path):
    return ['torch', '-c', 'ncm_kpconv_s3dis.yml', '--dataset_path', data,
            '--device', 'cpu', '--main_log_dir', tmp_path / 'logs',
            '--dataset.cache_dir', tmp_path / 'cache',
            '--dataset.test_result_folder', tmp_path / 'test',
            '--pipeline.save_ckpt_freq', '1',
            *tiny_run_overrides(in_radius=1.0, first_subsampling_dl=0.1)]


@pytest.fixture(scope='module')
def s3dis(tmp_path_factory):
    """Two generated rooms (Areas 1 and 5), converted before the ranks start
    (otherwise both ranks would convert them)."""
    root = tmp_path_factory.mktemp('ddp') / 'Stanford3dDataset'
    write_demo_s3dis(root, areas=(1, 5), rooms_per_area=1, seed=5)
    convert_s3dis(root, workers=1)
    return root


def torchrun(args, folder, hook=None):
    """tests/distributed_run.py under a 2-rank torchrun in `folder`; returns
    (completed process, the ranks' reports or None)."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    env.pop(STEP_HOOK_ENV, None)
    if hook:
        env[STEP_HOOK_ENV] = hook
    ranks_out = folder / 'ranks'
    ranks_out.mkdir(parents=True, exist_ok=True)
    for old in ranks_out.glob('rank*.json'):
        old.unlink()
    done = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone',
         '--nproc_per_node', '2', str(RUNNER), str(ranks_out),
         *map(str, args)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    reports = [json.loads(path.read_text())
               for path in sorted(ranks_out.glob('rank*.json'))]
    return done, reports or None


def test_two_ranks_log_the_sum_of_their_confusion_matrices(s3dis, tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    train, reports = torchrun(run_args(s3dis, tmp_path), tmp_path)
    assert train.returncode == 0, (train.stdout + train.stderr)[-4000:]
    assert [(r['rank'], r['world_size']) for r in reports] == [(0, 2), (1, 2)]
    # DDP keeps the replicas equal: bit for bit after the run.
    assert reports[0]['weights'] == reports[1]['weights']
    local = [np.array(r['local_valid']) for r in reports]
    # Each rank validated its own spheres (seeded per rank), and every rank
    # holds the sum.
    assert local[0].sum() > 0 and local[1].sum() > 0
    assert not np.array_equal(local[0], local[1])
    for report in reports:
        assert np.array_equal(report['reduced_valid'], local[0] + local[1])

    # Only rank 0 writes: one log file, one TensorBoard run, the checkpoint.
    run_dir = tmp_path / 'logs' / 'NCMKPFCNN_RobustS3DIS_torch'
    logs = list(run_dir.glob('log_train_*.txt'))
    assert len(logs) == 1
    logged = json.loads(CONFUSION.search(logs[0].read_text()).group(1))
    assert np.array_equal(logged, local[0] + local[1])
    assert len(list((tmp_path / 'logs' / 'train_log').iterdir())) == 1
    checkpoint = run_dir / 'checkpoint' / 'ckpt_00000.pth'
    assert checkpoint.is_file()

    test = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, run_args(s3dis, tmp_path)),
         '--split', 'test', '--ckpt_path', checkpoint],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert test.returncode == 0, test.stderr[-3000:]
    assert f'Loading checkpoint {checkpoint}' in test.stderr
    assert 'Test IoU per class' in test.stderr


def test_open3d_ml_primary_address_is_what_torch_reads():
    environ = {'WORLD_SIZE': '2', 'RANK': '1', 'LOCAL_RANK': '1',
               'PRIMARY_ADDR': '10.0.0.7', 'PRIMARY_PORT': '29501'}
    assert Ranks.from_env(environ) == Ranks(1, 2, 1)
    assert environ['MASTER_ADDR'] == '10.0.0.7'
    assert environ['MASTER_PORT'] == '29501'
    torchrun = {'PRIMARY_ADDR': 'a', 'MASTER_ADDR': 'b'}
    adopt_primary_address(torchrun)
    assert torchrun['MASTER_ADDR'] == 'b'


def test_a_single_process_is_rank_0_of_1():
    assert Ranks.from_env({}) == Ranks(0, 1, 0)
    with pytest.raises(RuntimeError, match='torchrun'):
        Ranks.from_env({'WORLD_SIZE': '2'})


def test_rank_seeds_are_reproducible_and_distinct():
    seeds = [rank_seed(1234, rank) for rank in range(4)]
    assert seeds == [rank_seed(1234, rank) for rank in range(4)]
    assert len(set(seeds)) == 4 and all(0 <= s < 2**31 for s in seeds)


def final_weights(folder, epoch):
    return checkpoints.load(
        folder / 'logs' / 'NCMKPFCNN_RobustS3DIS_torch' / 'checkpoint' /
        checkpoints.checkpoint_name(epoch))['model_state_dict']


def test_a_two_rank_run_stopped_by_sigterm_resumes_exactly(s3dis, tmp_path):
    """Both ranks get SIGTERM at step 1 of epoch 1 (as torchrun forwards
    it); the checkpoint the two ranks write resumes under two ranks and the
    run ends with the weights of the run that was not stopped."""
    def args(folder):
        return [*run_args(s3dis, folder), '--pipeline.max_epoch', '1',
                '--dataset.steps_per_epoch_train', '8',
                '--pipeline.deterministic', 'true',
                '--pipeline.check_every', '1']
    whole = tmp_path / 'whole'
    done, _ = torchrun(args(whole), whole.mkdir() or whole)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    stopped = tmp_path / 'stopped'
    stopped.mkdir()
    done, _ = torchrun(args(stopped), stopped, hook='TERM:1:1')
    assert done.returncode != 0
    assert 'Stopped at batch 1 of 2 of epoch 1' in done.stderr
    done, reports = torchrun(args(stopped), stopped)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert '1 batch(es) of epoch 1 done; resuming there' in done.stderr
    assert 'random generators are seeded afresh' not in done.stderr
    assert reports[0]['weights'] == reports[1]['weights']
    expected, resumed = final_weights(whole, 1), final_weights(stopped, 1)
    assert [k for k in expected
            if not torch.equal(expected[k], resumed[k])] == []
