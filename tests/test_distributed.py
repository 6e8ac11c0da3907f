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
from ncm_plugin.training.distributed import (Ranks, adopt_primary_address,
                                             device_for, rank_seed,
                                             steps_per_rank)
from ncm_plugin.training.items import ItemRequests
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


def test_without_steps_per_epoch_the_ranks_share_the_split_out():
    assert steps_per_rank(None, 1, 5) is None  # a single process: the split
    assert steps_per_rank(None, 2, 5) == 3
    assert steps_per_rank(10, 4, 5) == 3


def test_item_orders_are_split_between_ranks_and_cover_the_epoch():
    """Two ranks, 5 clouds, no steps_per_epoch: 3 items a rank, one shared
    order of 6 dealt out, so every cloud comes at least once an epoch; one
    rank alone draws what a single process always drew."""
    drawn = []
    for rank in range(2):
        requests = ItemRequests(5, 3, seed=rank_seed(9, rank), order_seed=77,
                                ranks=Ranks(rank, 2, rank))
        requests.start_epoch(4)
        drawn.append([r.cloud for r in requests])
    assert sorted(drawn[0] + drawn[1]) == [0, 0, 1, 2, 3, 4]
    single = ItemRequests(5, 3, seed=77)
    single.start_epoch(4)
    expected = np.random.default_rng([77, 4]).permutation(3) % 5
    assert [r.cloud for r in single] == list(expected)


def test_one_visible_gpu_per_process_is_cuda_0(monkeypatch):
    """SLURM's --gpus-per-task=1 shows each rank one GPU: LOCAL_RANK 3 is
    then cuda:0, not an invalid ordinal."""
    chosen = []
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'set_device', chosen.append)
    assert device_for(Ranks(3, 4, 3), 'cuda') == torch.device('cuda', 0)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    assert device_for(Ranks(3, 4, 3), 'cuda') == torch.device('cuda', 3)
    assert chosen == [torch.device('cuda', 0), torch.device('cuda', 3)]


RANK_ZERO_FAILS = '''
import sys
import torch.distributed as dist
from ncm_plugin.training.distributed import Ranks, RankZeroFailed, rank_zero_first
ranks = Ranks.from_env()
dist.init_process_group('gloo')
try:
    with rank_zero_first(ranks):
        if ranks.primary:
            raise FileNotFoundError('/nowhere/Area_1 not found')
        print('the block ran on rank', ranks.rank)
except RankZeroFailed as error:
    print('RankZeroFailed:', error)
    sys.exit(3)
except FileNotFoundError:
    sys.exit(2)
'''


def test_when_rank_0_fails_first_the_others_stop_at_once_saying_why(tmp_path):
    """rank_zero_first: the other ranks used to wait 24 h in a barrier."""
    import socket
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    script = tmp_path / 'rank_zero_fails.py'
    script.write_text(RANK_ZERO_FAILS)
    runs = [subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, 'PYTHONPATH': str(REPO), 'RANK': str(rank),
             'LOCAL_RANK': str(rank), 'WORLD_SIZE': '2',
             'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port),
             'OMP_NUM_THREADS': '1'}) for rank in (0, 1)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [2, 3], outputs
    assert 'rank 0 failed while preparing the data (FileNotFoundError: ' \
        '/nowhere/Area_1 not found)' in outputs[1]
    assert 'the block ran' not in outputs[1]
