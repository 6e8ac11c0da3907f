"""Training clouds are read once per run and memory-mapped: no sphere reads
Open3D-ML's cache (the whole cloud, KD-tree included) or copies a cloud,
a worker gets file names, not clouds, and the folder goes with the run."""
import gc
import pickle

import numpy as np
import pytest

from ncm_plugin.training.clouds import CloudStore
from tiny_training import tiny_config, write_cached_s3dis


def test_a_store_gives_back_each_array_read_only_and_pickles_small():
    rng = np.random.default_rng(0)
    cloud = {'point': rng.random((5000, 3), dtype=np.float32),
             'feat': rng.random((5000, 3)).astype(np.float32),
             'label': rng.integers(0, 13, 5000).astype(np.int32),
             'search_tree': object(), 'name': 'room'}
    store = CloudStore()
    assert store.add(cloud) == 0
    copy = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 2000
    for key in ('point', 'feat', 'label'):
        got = copy.cloud(0)[key]
        assert isinstance(got, np.memmap) and not got.flags.writeable
        assert got.dtype == cloud[key].dtype
        np.testing.assert_array_equal(got, cloud[key])
    assert copy.cloud(0)['name'] == 'room'
    assert 'search_tree' not in copy.cloud(0)
    folder = store.folder
    del copy
    gc.collect()
    assert folder.is_dir()  # a worker's copy never removes it
    del store
    gc.collect()
    assert not folder.exists()


@pytest.fixture(scope='module')
def rooms(tmp_path_factory):
    return write_cached_s3dis(tmp_path_factory.mktemp('rooms'))


def test_no_sphere_reads_the_cache(rooms, tmp_path, monkeypatch):
    from open3d._ml3d.utils.dataset_helper import Cache

    from ncm_plugin.tools.runner import build
    cfg = tiny_config(rooms, tmp_path / 'logs')
    cfg['dataset'].update(use_cache=True, cache_dir=str(tmp_path / 'cache'),
                          steps_per_epoch_train=6)
    _, _, pipeline = build(cfg, 0)
    loader, sampler = pipeline._loader('train', 2, 'steps_per_epoch_train')
    reads = []
    original = Cache._read
    monkeypatch.setattr(Cache, '_read', lambda self, path: (
        reads.append(path), original(self, path))[1])
    sampler.start_epoch(0)
    batches = list(loader)
    assert len(batches) == 3 and reads == []
    assert len(sampler.clouds) == len(loader.dataset.dataset)
    assert len(pickle.dumps(loader.dataset.clouds)) < 10_000
