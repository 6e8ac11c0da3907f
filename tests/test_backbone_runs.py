"""Short training runs through scripts/run_pipeline.py with each backbone's
shipped config (shrunk on the command line) on generated data, with the 3D
summaries of TensorBoard on: the NCM term goes down. PVCNN is not run: its Open3D ops have no CPU kernel in the CPU
wheel (see test_backbones.py for what is tested of it)."""
import re
import subprocess
import sys

import pytest

from conftest import tiny_run_overrides
from tiny_training import SCRIPT

SHRINK = {
    'ncm_randlanet_s3dis': [
        '--dataset.steps_per_epoch_train', '8', '--model.num_points', '4096', '--model.num_layers', '2',
        '--model.sub_sampling_ratio', '[4, 4]', '--model.dim_output',
        '[8, 16]', '--pipeline.optimizer.lr', '0.01'],
    'ncm_pointtransformer_s3dis': [
        '--model.blocks', '[1, 1, 1, 1, 1]', '--model.voxel_size', '0.08',
        '--model.max_voxels', '6000'],
    'ncm_sparseconvunet_scannet': [
        '--model.multiplier', '4', '--model.voxel_size', '0.1',
        '--pipeline.optimizer.lr', '0.01'],
    'ncm_kpfcnn_s3dis': [
        *tiny_run_overrides(1.0, 0.08)[10:], '--pipeline.learning_rate',
        '0.05'],
}
EPOCHS = {'ncm_randlanet_s3dis': 5, 'ncm_pointtransformer_s3dis': 4,
          'ncm_sparseconvunet_scannet': 4, 'ncm_kpfcnn_s3dis': 6}


@pytest.fixture(scope='module')
def s3dis(tmp_path_factory):
    from ncm_plugin.datasets.demo import write_demo
    root = tmp_path_factory.mktemp('demo_s3dis') / 's3dis'
    write_demo('s3dis', root, seed=0, areas=(1, 3))
    return root


def ncm_kl_per_epoch(log):
    """Training ncm_kl of every epoch, from the log's loss-term lines."""
    return [float(v) for v in re.findall(
        r'Training loss terms: .*ncm_kl ([0-9.]+)', log)]


@pytest.mark.parametrize('config', sorted(SHRINK))
def test_a_short_run_lowers_the_ncm_term(config, s3dis, scannet, tmp_path):
    data = scannet if 'scannet' in config else s3dis
    args = [sys.executable, str(SCRIPT), 'torch', '-c', f'{config}.yml',
            '--dataset_path', str(data), '--device', 'cpu',
            '--main_log_dir', str(tmp_path / 'logs'),
            '--dataset.cache_dir', str(tmp_path / 'cache'),
            '--dataset.test_result_folder', str(tmp_path / 'test'),
            '--pipeline.max_epoch', str(EPOCHS[config]),
            '--dataset.steps_per_epoch_train', '4',  # SHRINK may override
            '--dataset.steps_per_epoch_valid', '1',
            '--pipeline.batch_size', '2', '--pipeline.val_batch_size', '1',
            '--model.ncm.weight', '3.0',
            # The 3D summary of the first batches (Open3D-ML dispatches it
            # on the model name).
            '--pipeline.summary.record_for', '[train, valid]',
            *SHRINK[config]]
    if 's3dis' in config:
        args += ['--dataset.test_area_idx', '3']
    run = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    kl = ncm_kl_per_epoch(run.stderr + run.stdout)
    assert len(kl) == EPOCHS[config] + 1
    # Samples differ from epoch to epoch (KPFCNN's spheres most): the mean
    # of the last two epochs against that of the first two.
    assert sum(kl[-2:]) < 0.9 * sum(kl[:2]), kl
