"""Distributed training under torchrun on the CPU (gloo, 2 processes)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import tiny_run_overrides
from ncm_plugin.datasets.s3dis.convert import convert_s3dis
from ncm_plugin.datasets.s3dis.synthetic import write_demo_s3dis
from ncm_plugin.training.distributed import Ranks, adopt_primary_address, rank_seed
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


def test_two_ranks_log_the_sum_of_their_confusion_matrices(s3dis, tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': str(REPO)}
    ranks_out = tmp_path / 'ranks'
    ranks_out.mkdir()
    train = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone',
         '--nproc_per_node', '2', str(RUNNER), str(ranks_out),
         *map(str, run_args(s3dis, tmp_path))],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, (train.stdout + train.stderr)[-4000:]
    reports = [json.loads((ranks_out / f'rank{r}.json').read_text())
               for r in (0, 1)]
    assert [(r['rank'], r['world_size']) for r in reports] == [(0, 2), (1, 2)]
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
