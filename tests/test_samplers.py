"""Sphere choices made in order in the main process, heavy work in workers
started once per run from a fork server: the same batches with or without
workers, coverage raised as a brute-force sphere says, replays exact."""
import os
import pickle
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_pickles_without_tensors
from tiny_training import make_pipeline, write_cached_s3dis
from ncm_plugin.training.samplers import (WORKER_START_METHOD, SphereRequest,
                                          SphereRequests, seeded,
                                          worker_context)


@pytest.fixture(scope='module')
def cached_s3dis(tmp_path_factory):
    return write_cached_s3dis(tmp_path_factory.mktemp('s3dis'))


def train_loader(root, tmp_path, num_workers, seed=7):
    pipeline = make_pipeline(root, tmp_path, num_workers=num_workers,
                             deterministic=True)
    pipeline.seed = seed
    pipeline._seed_everything()
    loader, sampler = pipeline._loader('train', 2, 'steps_per_epoch_train')
    return pipeline, loader, sampler


def batch_arrays(batch):
    data = batch['data']
    return [t.numpy().copy() for name in ('points', 'neighbors', 'pools',
                                          'upsamples', 'lengths')
            for t in getattr(data, name)] + [data.features.numpy().copy(),
                                             data.labels.numpy().copy()]


def test_coverage_grows_as_a_brute_force_sphere_says(cached_s3dis, tmp_path):
    pipeline, loader, sampler = train_loader(cached_s3dis, tmp_path, 0)
    before = [p.copy() for p in sampler.coverage.possibilities]
    request = sampler.next_request()
    assert isinstance(request, SphereRequest) and len(request.centres) == 1
    cloud, centre = request.cloud, request.centres[0]
    # The least covered cloud and point were chosen.
    assert cloud == int(np.argmin([p.min() for p in before]))
    assert centre == int(np.argmin(before[cloud]))
    # Every point within in_radius of the centre, found by a double loop's
    # equivalent (all distances), gets (1 - d^2 / max d^2)^2 more coverage.
    points = sampler._cloud(cloud)[0].astype(np.float64)
    distance2 = np.sum((points - points[centre]) ** 2, axis=1)
    inside = distance2 <= pipeline.model.cfg.in_radius ** 2
    expected = before[cloud].copy()
    expected[inside] += (1 - distance2[inside] / distance2[inside].max()) ** 2
    np.testing.assert_allclose(sampler.coverage.possibilities[cloud], expected,
                               rtol=0, atol=1e-6)
    for other in set(range(len(before))) - {cloud}:
        assert np.array_equal(sampler.coverage.possibilities[other],
                              before[other])


def test_workers_load_the_spheres_the_main_process_chose(cached_s3dis,
                                                         tmp_path):
    batches = {}
    for workers in (0, 2):
        _, loader, sampler = train_loader(cached_s3dis, tmp_path / str(workers),
                                          workers)
        batches[workers] = []
        for epoch in range(2):
            sampler.start_epoch(epoch)
            batches[workers] += [batch_arrays(b) for b in loader]
    assert len(batches[0]) == 6
    for alone, shared in zip(batches[0], batches[2]):
        assert all(np.array_equal(a, b) for a, b in zip(alone, shared))


def test_each_sphere_holds_the_points_within_its_radius(cached_s3dis,
                                                        tmp_path):
    pipeline, loader, sampler = train_loader(cached_s3dis, tmp_path, 0)
    requests = [sampler.next_request() for _ in range(4)]
    cfg = pipeline.model.cfg
    for request in requests:
        points = sampler._cloud(request.cloud)[0]
        distance2 = np.sum((points - points[request.centres[0]]) ** 2, axis=1)
        inside = int((distance2 <= cfg.in_radius ** 2).sum())
        item = loader.dataset[request]
        assert len(item['data']['p_list'][0]) == min(inside, cfg.max_in_points)


def test_workers_start_once_per_run_from_the_fork_server(cached_s3dis,
                                                         tmp_path):
    _, loader, sampler = train_loader(cached_s3dis, tmp_path, 2)
    assert loader.multiprocessing_context.get_start_method() == \
        WORKER_START_METHOD == 'forkserver'
    assert loader.persistent_workers
    pids = []
    for epoch in range(3):
        sampler.start_epoch(epoch)
        iterator = iter(loader)
        list(iterator)
        pids.append(sorted(w.pid for w in iterator._workers))
    assert pids[0] == pids[1] == pids[2] and os.getpid() not in pids[0]


def plain(request):
    """A SphereRequest as comparable values (its members are arrays)."""
    return (request.cloud, request.centres, request.seed,
            tuple(m.tobytes() for m in request.members))


def test_a_replayed_epoch_continues_with_the_same_spheres(cached_s3dis,
                                                          tmp_path):
    _, _, sampler = train_loader(cached_s3dis, tmp_path, 0)
    start = sampler.state_dict()
    sampler.start_epoch(3)
    whole = list(SphereRequests(sampler, 6))
    sampler.load_state_dict(start)
    sampler.start_epoch(3)
    requests = SphereRequests(sampler, 6)
    requests.skip(4)
    assert [plain(r) for r in requests] == [plain(r) for r in whole[4:]]
    assert len({r.seed for r in whole}) == 6
    after = sampler.state_dict()['coverage']['possibilities']
    sampler.load_state_dict(start)
    sampler.start_epoch(3)
    list(SphereRequests(sampler, 6))
    assert all(torch.equal(a, b) for a, b in zip(
        after, sampler.state_dict()['coverage']['possibilities']))


def test_worker_payloads_hold_no_tensor_after_a_training_step(cached_s3dis,
                                                             tmp_path):
    """After a step the model holds device tensors (logged loss terms, the
    NCM's last KL); the dataset, batcher and worker_init_fn that a worker
    receives hold none (on CUDA, unpickling one would start CUDA in a forked
    worker)."""
    from open3d._ml3d.torch.modules.losses import SemSegLoss
    pipeline, loader, _ = train_loader(cached_s3dis, tmp_path, 2)
    model = pipeline.model
    requests = list(islice(iter(loader.sampler), 2))
    inputs = loader.collate_fn([loader.dataset[r] for r in requests])
    results = model(inputs['data'])
    model.get_loss(SemSegLoss(pipeline, model, pipeline.dataset, 'cpu'),
                   results, inputs, 'cpu')
    assert model.loss_terms and isinstance(model.ncm_loss.last_kl,
                                           torch.Tensor)
    for payload in (loader.dataset, loader.collate_fn, loader.worker_init_fn):
        assert_pickles_without_tensors(payload)
    copy = pickle.loads(pickle.dumps(loader.dataset))
    item = copy[requests[0]]  # the worker's copy still loads the sphere
    assert np.array_equal(item['data']['p_list'][0],
                          loader.dataset[requests[0]]['data']['p_list'][0])


def test_the_fork_server_and_its_workers_see_no_cuda_device(cached_s3dis,
                                                           tmp_path):
    from multiprocessing import forkserver
    worker_context()
    pid = forkserver._forkserver._forkserver_pid
    environ = (Path('/proc') / str(pid) / 'environ').read_bytes().split(b'\0')
    assert b'CUDA_VISIBLE_DEVICES=' in environ
    assert os.environ.get('CUDA_VISIBLE_DEVICES') != ''  # the trainer's own


def test_seeded_items_leave_the_cuda_generators_alone(monkeypatch):
    """torch.manual_seed would re-seed every CUDA device at every step of a
    run without workers (its dropout restarting from each batch's seed)."""
    calls = []
    for name in ('manual_seed', 'manual_seed_all', 'set_rng_state',
                 'set_rng_state_all'):
        monkeypatch.setattr(torch.cuda, name,
                            lambda *a, _name=name, **k: calls.append(_name))
    torch.manual_seed(11)
    before = torch.rand(3)
    torch.manual_seed(11)
    with seeded(5):
        inside = torch.rand(3)
    after = torch.rand(3)
    assert calls == ['manual_seed_all', 'manual_seed_all']  # ours only
    assert torch.equal(inside, torch.rand(3, generator=torch.Generator()
                                          .manual_seed(5)))
    assert torch.equal(after, before)  # the CPU generator given back


class _OpenThreads(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        import open3d
        return open3d.utility.get_max_threads()


def test_a_worker_gives_open3d_one_thread():
    """Its radius searches would otherwise take every core, the training
    step's included."""
    import functools

    from ncm_plugin.training.samplers import worker_context, worker_init
    loader = torch.utils.data.DataLoader(
        _OpenThreads(), batch_size=None, num_workers=1,
        multiprocessing_context=worker_context(),
        worker_init_fn=functools.partial(worker_init, main_pid=os.getpid()))
    assert list(loader) == [1]
