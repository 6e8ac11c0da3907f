"""A training setup small enough to run many times in a test: the conftest's
tiny KPConv on a few tiny rooms in the stock S3DIS cache format, as a
pipeline object or as a config file for scripts/run_pipeline.py."""
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from conftest import TINY_MODEL, tiny_scene

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / 'scripts' / 'run_pipeline.py'

MODEL = {**TINY_MODEL, 'name': 'NCMKPFCNN', 'num_classes': 13,
         'lbl_values': list(range(13)), 'ncm': {'weight': 1.0}}
DATASET = dict(name='S3DIS', test_area_idx=5, use_cache=False,
               sampler={'name': 'SharedSpatiallyRegularSampler'},
               steps_per_epoch_train=4, steps_per_epoch_valid=2)
PIPELINE = dict(name='NCMSemanticSegmentation', batch_size=2,
                val_batch_size=2, test_batch_size=2, max_epoch=1,
                device='cpu', learning_rate=0.01, momentum=0.9,
                weight_decay=0.0, deform_lr_factor=0.1, scheduler_gamma=0.9,
                save_ckpt_freq=1, train_sum_dir='tb', num_workers=0)


def write_cached_s3dis(root, areas=(1, 2, 5), rooms=2, points=3000):
    """`rooms` tiny rooms of `points` points per area as
    original_pkl/Area_N_room_K.pkl."""
    root = Path(root)
    (root / 'original_pkl').mkdir(parents=True, exist_ok=True)
    for area in areas:
        for room in range(rooms):
            scene = tiny_scene(10 * area + room, points)
            cloud = np.c_[2 * scene['point'], scene['feat'], scene['label']]
            with open(root / 'original_pkl' / f'Area_{area}_room_{room}.pkl',
                      'wb') as f:
                pickle.dump([cloud.astype(np.float64), []], f)
    return root


def tiny_config(data_root, log_dir, **pipeline):
    """The merged config dict of a tiny run."""
    return {'dataset': {**DATASET, 'dataset_path': str(data_root),
                        'test_result_folder': str(Path(log_dir) / 'test')},
            'model': dict(MODEL),
            'pipeline': {**PIPELINE, 'main_log_dir': str(log_dir), **pipeline}}


def write_tiny_config(path, data_root, log_dir, **pipeline):
    Path(path).write_text(yaml.safe_dump(tiny_config(data_root, log_dir,
                                                     **pipeline)))
    return Path(path)


def start_run(config, cwd, log_path, env=None, args=()):
    """scripts/run_pipeline.py on `config`, output (both streams) to log_path."""
    out = open(log_path, 'w')
    return subprocess.Popen([sys.executable, str(SCRIPT), 'torch', '-c',
                             str(config), *map(str, args)], cwd=cwd,
                            stdout=out, stderr=subprocess.STDOUT, env=env)


def make_pipeline(root, tmp_path, sampler='SharedSpatiallyRegularSampler',
                  **pipeline):
    """A tiny NCMSemanticSegmentation object on the rooms of
    write_cached_s3dis(root), logging under tmp_path."""
    from open3d._ml3d.datasets import S3DIS

    from ncm_plugin.models import NCMKPFCNN
    from ncm_plugin.training.pipeline import NCMSemanticSegmentation
    dataset = S3DIS(dataset_path=str(root), test_area_idx=5, use_cache=False,
                    sampler={'name': sampler},
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
