"""The training loop's guarantees for a backbone other than KPFCNN
(RandLA-Net, the cheapest on the CPU): same seed, same weights; a resumed
run ends with the weights of an uninterrupted one; two ranks under torchrun
keep equal replicas; DataLoader workers change nothing."""
import json
import os
import subprocess
import sys

import pytest

from ncm_plugin.datasets.demo import write_demo
from tiny_training import REPO

RUNNER = REPO / 'tests' / 'distributed_run.py'
SHRINK = ['--model.num_points', '2048', '--model.num_layers', '2',
          '--model.sub_sampling_ratio', '[4, 4]', '--model.dim_output',
          '[8, 16]', '--dataset.steps_per_epoch_train', '4',
          '--dataset.steps_per_epoch_valid', '1', '--pipeline.batch_size', '2',
          '--pipeline.val_batch_size', '1', '--dataset.test_area_idx', '3',
          '--pipeline.deterministic', 'true', '--pipeline.save_ckpt_freq', '1']


@pytest.fixture(scope='module')
def s3dis(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo_s3dis') / 's3dis'
    write_demo('s3dis', root, seed=0, areas=(1, 3))
    # Converted once, before any run (two ranks would both convert).
    from ncm_plugin.datasets.s3dis.convert import convert_s3dis
    convert_s3dis(root, workers=1)
    return root


def run(data, folder, epochs, ranks=1, extra=(),
        config='ncm_randlanet_s3dis', shrink=SHRINK):
    """tests/distributed_run.py (scripts/run_pipeline.py's main + a report
    of the weights), alone or under a 2-rank torchrun; returns the reports."""
    out = folder / 'ranks'
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob('rank*.json'):
        old.unlink()
    args = [str(RUNNER), str(out), 'torch', '-c', f'{config}.yml',
            '--dataset_path', str(data), '--device', 'cpu',
            '--main_log_dir', str(folder / 'logs'),
            '--dataset.cache_dir', str(folder / 'cache'),
            '--dataset.test_result_folder', str(folder / 'test'),
            '--pipeline.max_epoch', str(epochs), *shrink, *extra]
    launcher = ([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                 '--nproc_per_node', str(ranks)] if ranks > 1 else
                [sys.executable])
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    done = subprocess.run(launcher + args, cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return [json.loads(p.read_text()) for p in sorted(out.glob('rank*.json'))]


@pytest.fixture(scope='module')
def uninterrupted(s3dis, tmp_path_factory):
    """Weights after epochs 0..2 in one run."""
    return run(s3dis, tmp_path_factory.mktemp('straight'), 2)[0]['weights']


def test_same_seed_same_weights(s3dis, tmp_path, uninterrupted):
    assert run(s3dis, tmp_path, 2)[0]['weights'] == uninterrupted


def test_another_seed_other_weights(s3dis, tmp_path, uninterrupted):
    assert run(s3dis, tmp_path, 2, extra=['--seed', '1'])[0]['weights'] != \
        uninterrupted


def test_resume_after_an_epoch_gives_the_uninterrupted_weights(
        s3dis, tmp_path, uninterrupted):
    run(s3dis, tmp_path, 0)
    assert run(s3dis, tmp_path, 2)[0]['weights'] == uninterrupted


def test_two_ranks_keep_equal_replicas(s3dis, tmp_path):
    reports = run(s3dis, tmp_path, 1, ranks=2)
    assert [(r['rank'], r['world_size']) for r in reports] == [(0, 2), (1, 2)]
    assert reports[0]['weights'] == reports[1]['weights']
    assert sum(map(sum, reports[0]['local_valid'])) > 0


def test_two_workers_give_the_weights_of_a_run_without_workers(
        s3dis, tmp_path, uninterrupted):
    """Items requested and seeded in the main process (training/items.py):
    workers load exactly what the main process would (the stock RandLA-Net
    transform would draw the same augmentation for every item of a worker)."""
    with_workers = run(s3dis, tmp_path, 2, extra=[
        '--pipeline.num_workers', '2'])[0]['weights']
    assert with_workers == uninterrupted


# PointTransformer on S3DIS and SparseConvUnet (NCM on its voxels) on
# ScanNet, shrunk: their own batchers, the same item requests.
OTHERS = {
    'ncm_pointtransformer_s3dis': [
        '--model.blocks', '[1, 1, 1, 1, 1]', '--model.voxel_size', '0.08',
        '--model.max_voxels', '6000', '--dataset.test_area_idx', '3'],
    'ncm_sparseconvunet_scannet': [
        '--model.multiplier', '4', '--model.voxel_size', '0.1'],
}
COMMON = ['--dataset.steps_per_epoch_train', '4',
          '--dataset.steps_per_epoch_valid', '1', '--pipeline.batch_size', '2',
          '--pipeline.val_batch_size', '1', '--pipeline.deterministic', 'true']


@pytest.mark.parametrize('config', sorted(OTHERS))
def test_workers_and_ranks_for_the_other_backbones(config, s3dis, scannet,
                                                   tmp_path):
    """Runs with two workers finish; two torchrun ranks keep equal replicas.
    (Two identical runs of these backbones already differ on this CPU build,
    bit for bit: Open3D's ops they use are not reproducible here, so a run
    with workers cannot be compared with one without, as RandLA-Net's is.)"""
    data = scannet if 'scannet' in config else s3dis
    shrink = COMMON + OTHERS[config]
    workers = run(data, tmp_path / 'workers', 1, config=config, shrink=shrink,
                  extra=['--pipeline.num_workers', '2'])
    assert len(workers) == 1
    ranks = run(data, tmp_path / 'ranks', 0, ranks=2, config=config,
                shrink=shrink)
    assert [r['rank'] for r in ranks] == [0, 1]
    assert ranks[0]['weights'] == ranks[1]['weights']
