"""The training and validation batches of a tiny KPConv deform run do not
change: per-array sha256 digests of the batches the plugin's training
pipeline builds are compared with digests recorded from the code before the
data pipeline was made faster (issue 19), in tests/data/batch_digests.json.

The run: NCMKPFCNN (the conftest's two-layer KPConv deform, NCM term with
kNN neighbours and scene targets, so that the batches carry
`ncm_neighbors` and `ncm_target`) on tiny_training's generated rooms, read
through Open3D-ML's cache; its loaders made as `run_train` makes them
(`_seed_everything`, then the training and validation loaders), the first
TRAIN_BATCHES batches of epoch 0's training and VALID_BATCHES of its
validation. Every array of a batch gets three digests (dtype and shape
included):
- `exact`: the array as it is, bit for bit (pipeline.deterministic);
- `rows`: each row sorted, the rows in their order ("the same set in every
  row": Open3D's multi-threaded radius search orders a row's neighbours
  differently from run to run, nothing else changes without deterministic);
- `set`: each row sorted, then the rows sorted lexicographically.
An array of more than two dimensions is seen as rows of its first axis, a
1-D array as rows of one value.

With pipeline.deterministic every digest must match; without it (and with
a DataLoader worker) `rows` and `set` must. `UNREAD_IN_TRAINING` names the
fields that KPConv's transform carries for the test split's reprojection
(O(cloud) copies per sphere) and that no training step reads: a training
batch may leave them out, but one that holds them must hold the recorded
values.

Regenerate the reference only for a change of the batches that is meant
(and say so in the commit):

    .venv/bin/python tests/test_batch_digests.py --record
"""
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tiny_training import tiny_config, write_cached_s3dis

REFERENCE = Path(__file__).resolve().parent / 'data' / 'batch_digests.json'
TRAIN_BATCHES, VALID_BATCHES = 3, 2
SEED = 5
LIST_FIELDS = ('points', 'neighbors', 'pools', 'upsamples', 'lengths')
TENSOR_FIELDS = ('features', 'labels', 'scales', 'rots', 'frame_inds',
                 'frame_centers', 'ncm_target', 'ncm_neighbors')
# Per-sphere lists of arrays: the sphere's point indices in its cloud, the
# test split's reprojection indices, the whole cloud's labels.
SPHERE_FIELDS = ('reproj_masks', 'reproj_inds', 'val_labels')
UNREAD_IN_TRAINING = ('reproj_inds', 'val_labels')


def sha256(array):
    array = np.ascontiguousarray(array)
    head = f'{array.dtype.str}{array.shape}'.encode()
    return hashlib.sha256(head + array.tobytes()).hexdigest()


def digests(array):
    """{'exact', 'rows', 'set'} sha256 digests of `array` (see the module's
    docstring), with its shape and dtype."""
    array = np.asarray(array)
    rows = array.reshape(1, 1) if array.ndim == 0 else \
        array.reshape(len(array), int(np.prod(array.shape[1:])))
    within = np.sort(rows, axis=1)
    ordered = within[np.lexsort(within.T[::-1])] if within.size else within
    return {'shape': list(array.shape), 'dtype': array.dtype.str,
            'exact': sha256(array), 'rows': sha256(within),
            'set': sha256(ordered)}


def batch_arrays(out):
    """{field name: numpy array} of a collated KPConv batch ({'data', 'attr'}):
    every layer's lists, the tensors, the per-sphere arrays."""
    batch, arrays = out['data'], {}
    for name in LIST_FIELDS:
        for layer, tensor in enumerate(getattr(batch, name)):
            arrays[f'{name}[{layer}]'] = tensor.numpy()
    for name in TENSOR_FIELDS:
        value = getattr(batch, name, None)
        if value is not None:
            arrays[name] = value.numpy()
    for name in SPHERE_FIELDS:
        for sphere, value in enumerate(getattr(batch, name, None) or ()):
            arrays[f'{name}[{sphere}]'] = np.asarray(value)
    return arrays


def batch_record(out):
    """What the reference holds of one batch: the spheres (cloud name, seed)
    in plain, every array's digests."""
    return {'spheres': [[attr['name'], attr['sphere_seed']]
                        for attr in out['attr']],
            'arrays': {name: digests(array)
                       for name, array in batch_arrays(out).items()}}


def run_config(root, folder, deterministic=True, num_workers=0):
    """The merged config of the tiny run (cache under `folder`)."""
    cfg = tiny_config(root, Path(folder) / 'logs', deterministic=deterministic,
                      num_workers=num_workers)
    cfg['dataset'].update(use_cache=True, cache_dir=str(Path(folder) / 'cache'),
                          steps_per_epoch_train=2 * TRAIN_BATCHES,
                          steps_per_epoch_valid=2 * VALID_BATCHES)
    # Spheres of more than max_in_points lose points at random, those of
    # fewer than min_in_points get another centre, batches beyond
    # batch_limit lose their last spheres: every branch of the crop.
    cfg['model'].update(max_in_points=600, min_in_points=300, batch_limit=1000)
    cfg['model']['ncm'] = {'weight': 1.0, 'neighborhood': 'knn', 'k': 8,
                           'target': 'scene'}
    return cfg


def epoch_batches(loader, sampler, count):
    """The first `count` batches of epoch 0 of a loader, set up as the
    pipeline's `_run_epoch` sets it up."""
    sampler.start_epoch(0)
    loader.sampler.skip(0)
    batches = []
    for out in loader:
        batches.append(batch_record(out))
        if len(batches) == count:
            break
    return batches


def recorded_run(root, folder, **settings):
    """{'train': [batch records], 'valid': [...]} of the tiny run."""
    from ncm_plugin.tools.runner import build
    cfg = run_config(root, folder, **settings)
    _, _, pipeline = build(cfg, SEED)
    pipeline._seed_everything()
    train = pipeline._loader('train', cfg['pipeline']['batch_size'],
                             'steps_per_epoch_train')
    valid = pipeline._loader('validation', cfg['pipeline']['val_batch_size'],
                             'steps_per_epoch_valid')
    return {'train': epoch_batches(*train, TRAIN_BATCHES),
            'valid': epoch_batches(*valid, VALID_BATCHES)}


@pytest.fixture(scope='module')
def rooms(tmp_path_factory):
    return write_cached_s3dis(tmp_path_factory.mktemp('rooms'))


@pytest.fixture(scope='module')
def reference():
    return json.loads(REFERENCE.read_text())


def mismatches(run, reference, kinds):
    """'split batch field: kind' for every recorded digest the run does not
    reproduce (a missing field counts, unless UNREAD_IN_TRAINING)."""
    found = []
    for split, batches in reference['batches'].items():
        assert len(run[split]) == len(batches), split
        for number, (got, want) in enumerate(zip(run[split], batches)):
            where = f'{split} batch {number}'
            if got['spheres'] != want['spheres']:
                found.append(f"{where}: spheres {got['spheres']} instead of "
                             f"{want['spheres']}")
            for name, recorded in want['arrays'].items():
                digest = got['arrays'].get(name)
                if digest is None:
                    if name.split('[')[0] not in UNREAD_IN_TRAINING:
                        found.append(f'{where} {name}: missing')
                    continue
                found += [f"{where} {name}: {kind} ({digest['shape']} "
                          f"{digest['dtype']}, recorded {recorded['shape']} "
                          f"{recorded['dtype']})"
                          for kind in kinds if digest[kind] != recorded[kind]]
    return found


def test_the_reference_holds_every_kind_of_array(reference):
    batch = reference['batches']['train'][0]['arrays']
    layers = reference['settings']['num_layers']
    for name in LIST_FIELDS:
        assert [f'{name}[{layer}]' in batch for layer in range(layers)] == \
            [True] * layers
    for name in ('features', 'labels', 'frame_centers', 'ncm_target',
                 'ncm_neighbors', 'reproj_masks[0]', 'reproj_masks[1]'):
        assert name in batch
    assert [len(b) for b in reference['batches'].values()] == \
        [TRAIN_BATCHES, VALID_BATCHES]


def test_deterministic_batches_are_bit_for_bit_the_recorded_ones(
        rooms, tmp_path, reference):
    run = recorded_run(rooms, tmp_path, deterministic=True)
    assert mismatches(run, reference, ('exact', 'rows', 'set')) == []


def test_batches_hold_the_recorded_sets_without_deterministic(
        rooms, tmp_path, reference):
    """Without pipeline.deterministic and with a DataLoader worker: the
    same rows, each in any order."""
    run = recorded_run(rooms, tmp_path, deterministic=False, num_workers=1)
    assert mismatches(run, reference, ('rows', 'set')) == []


def record():
    """Write REFERENCE from the current code."""
    with tempfile.TemporaryDirectory(prefix='ncm_digests_') as folder:
        folder = Path(folder)
        os.chdir(folder)  # KPConv writes its kernels to ./kernels
        rooms = write_cached_s3dis(folder / 'rooms')
        run = recorded_run(rooms, folder / 'run', deterministic=True)
    model = run_config(rooms, folder)['model']
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps({
        'about': 'tests/test_batch_digests.py; regenerate with '
                 '.venv/bin/python tests/test_batch_digests.py --record',
        'settings': {'seed': SEED, **{key: model[key] for key in (
            'num_layers', 'architecture', 'in_radius', 'first_subsampling_dl',
            'max_in_points', 'min_in_points', 'batch_limit', 'ncm')}},
        'batches': run}, indent=1) + '\n')
    print(f'wrote {REFERENCE}')


if __name__ == '__main__':
    if sys.argv[1:] != ['--record']:
        sys.exit(f'usage: {sys.argv[0]} --record')
    record()
