"""NCMSemanticSegmentation: dispatch, sphere check, loss-term logs (workers:
test_samplers.py)."""
import pytest
from open3d._ml3d.datasets import S3DIS
from open3d._ml3d.utils import Config, get_module

from conftest import TINY_MODEL
from tiny_training import write_cached_s3dis
from ncm_plugin.models import NCMKPFCNN
from ncm_plugin.training.pipeline import (DegenerateSpheresError,
                                          NCMSemanticSegmentation, check_spheres)


@pytest.fixture(scope='module')
def cached_s3dis(tmp_path_factory):
    """Two rooms per area in the stock S3DIS cache format (original_pkl)."""
    return write_cached_s3dis(tmp_path_factory.mktemp('s3dis'))


def make_pipeline(root, tmp_path, **pipeline):
    dataset = S3DIS(dataset_path=str(root), test_area_idx=5, use_cache=False,
                    sampler={'name': 'SharedSpatiallyRegularSampler'},
                    steps_per_epoch_train=6, steps_per_epoch_valid=2)
    model = NCMKPFCNN(**{**TINY_MODEL, 'num_classes': 13,
                         'lbl_values': list(range(13))})
    settings = dict(batch_size=2, val_batch_size=2, max_epoch=0,
                    main_log_dir=str(tmp_path / 'logs'), device='cpu',
                    learning_rate=0.01, momentum=0.9, weight_decay=0.0,
                    deform_lr_factor=0.1, scheduler_gamma=0.9,
                    save_ckpt_freq=1, train_sum_dir='tb')
    settings.update(pipeline)
    return NCMSemanticSegmentation(model, dataset, **settings)


def test_pipeline_is_registered():
    assert get_module('pipeline', 'NCMSemanticSegmentation',
                      'torch') is NCMSemanticSegmentation


def test_batcher_dispatches_on_the_class(cached_s3dis, tmp_path):
    pipeline = make_pipeline(cached_s3dis, tmp_path)
    assert pipeline.model.cfg.name == 'NCMKPFCNN'
    assert pipeline.get_batcher('cpu').model == 'KPFCNN'


def test_degenerate_spheres_are_refused():
    cfg = Config({'in_radius': 2.0, 'first_subsampling_dl': 0.04,
                  'max_in_points': 40000, 'batch_limit': 200000})
    with pytest.raises(DegenerateSpheresError, match='SemSegRandomSampler'):
        check_spheres([3, 3, 3], cfg, 'SemSegRandomSampler')
    check_spheres([6000, 9000, 400], cfg, 'SharedSpatiallyRegularSampler')


def test_training_logs_every_loss_term(cached_s3dis, tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import \
        EventAccumulator
    pipeline = make_pipeline(cached_s3dis, tmp_path, max_epoch=1)
    with caplog.at_level('INFO'):
        pipeline.run_train()
    assert 'Training loss terms: cross_entropy' in caplog.text
    assert 'ncm_kl' in caplog.text
    events = EventAccumulator(pipeline.tensorboard_dir)
    events.Reload()
    tags = events.Tags()['scalars']
    for term in ('cross_entropy', 'regularizer', 'ncm', 'ncm_kl'):
        assert f'Training loss/{term}' in tags
        assert f'Validation loss/{term}' in tags
    steps = [e.step for e in events.Scalars('Training loss/ncm_kl')]
    assert steps == [0, 1]
    checkpoints = sorted((tmp_path / 'logs').rglob('ckpt_*.pth'))
    assert [c.name for c in checkpoints] == ['ckpt_00000.pth', 'ckpt_00001.pth']
