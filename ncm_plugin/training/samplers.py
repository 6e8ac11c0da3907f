"""Spatially regular sphere sampling whose decisions do not depend on which
DataLoader worker runs first.

Open3D-ML's SemSegSpatiallyRegularSampler chooses a sphere where the item is
loaded: the cloud of least coverage ("possibility"), the least covered point
of it as the centre, then it raises the coverage of the points around it.
With workers each one updates its own copy of that state, or (with shared
memory and a lock) the order in which workers load decides the spheres.

Here the choice and the coverage update are made in the main process, in
order, when the DataLoader draws an index (`SphereRequests`): an index is a
`SphereRequest` (cloud, centre points, seed, and the points the main
process's radius search found), and the worker only does the heavy
per-sphere work (crop, augmentation, the batcher's subsampling and neighbor
lists) for it (`SphereDataset`), on the cloud's memory-mapped arrays
(clouds.py), never reading the whole cloud. The coverage is
a plain object (`Coverage`) a checkpoint can hold, the augmentation of a
sphere is seeded from (run seed, epoch, sphere number) and nothing a worker
needs is a closure, so workers start with forkserver, once per run.
"""
import copy
import copyreg
import random
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from open3d._ml3d.datasets.samplers import SemSegSpatiallyRegularSampler
from open3d._ml3d.torch.dataloaders import TorchDataloader
from open3d._ml3d.utils import SAMPLER, Config

from .clouds import CloudStore

# Workers are started by a single-threaded server process, never forked from
# the training process (which runs TensorBoard's, gloo's and OpenMP's threads:
# a fork can copy a lock another thread holds, and the child hangs for ever).
WORKER_START_METHOD = 'forkserver'
# Modules the fork server imports once, so that each worker starts at once.
WORKER_PRELOAD = ['ncm_plugin']
# Splits the stock sampler draws from at random (the others are swept in order).
TRAINING_SPLITS = ('train', 'validation', 'valid', 'training')


class SphereRequest(NamedTuple):
    """One sphere to load: cloud index of the split, the point indices of its
    centres (one, unless a sphere held fewer than the model's
    `min_in_points`), the seed of its augmentation, and the points within
    the radius of each centre as the main process's search found them (the
    worker crops them: one radius query per sphere)."""
    cloud: int
    centres: tuple
    seed: int
    members: tuple = ()


class Coverage:
    """How well every point of every cloud of a split has been covered by
    spheres (Open3D-ML's "possibilities"): [N_c] float64 per cloud, and the
    minimum of each cloud."""

    def __init__(self, possibilities):
        self.possibilities = [np.asarray(p, dtype=np.float64)
                              for p in possibilities]
        self.minimum = np.array([p.min() for p in self.possibilities])

    def least_covered_cloud(self):
        return int(np.argmin(self.minimum))

    def least_covered_point(self, cloud):
        return int(np.argmin(self.possibilities[cloud]))

    def cover(self, cloud, indices, distances2):
        """Raise the coverage of `indices` by (1 - d^2 / max d^2)^2, as the
        stock sampler does (the centre most, the sphere's edge not at all)."""
        delta = np.square(1 - distances2 / np.max(distances2))
        self.possibilities[cloud][indices] += delta
        self.minimum[cloud] = self.possibilities[cloud].min()

    def bump(self, cloud, index):
        """A centre whose sphere is empty: try another next time."""
        self.possibilities[cloud][index] += 0.001
        self.minimum[cloud] = self.possibilities[cloud].min()

    def state_dict(self):
        return {'possibilities': [torch.from_numpy(p.copy())
                                  for p in self.possibilities]}

    @classmethod
    def from_state_dict(cls, state):
        return cls([p.numpy().copy() for p in state['possibilities']])


def preprocessed_cloud(torch_split, index):
    """Cloud `index` of a TorchDataloader's split as the model preprocessed
    it: from Open3D-ML's cache, or by the preprocess."""
    split = torch_split.dataset
    attr = split.get_attr(index)
    if torch_split.cache_convert:
        return torch_split.cache_convert(attr['name'])
    if torch_split.preprocess:
        return torch_split.preprocess(split.get_data(index), attr)
    return split.get_data(index)


def sphere_seed(seed, epoch, number):
    """Seed of sphere `number` of `epoch`: the same whichever process loads
    it."""
    return int(np.random.SeedSequence([seed, epoch, number]).generate_state(1)[0])


def batch_seed(items):
    """Seed of a batch of SphereDataset items (None for other items)."""
    seeds = [item['attr'].get('sphere_seed') for item in items]
    if not seeds or None in seeds:
        return None
    return int(np.random.SeedSequence(seeds).generate_state(1)[0])


@contextmanager
def seeded(seed):
    """numpy's, random's and torch's CPU generators seeded for one item, and
    given back as they were (the stock transform draws from the global
    numpy generator).

    The CUDA generators are neither seeded nor touched: `torch.manual_seed`
    would re-seed every CUDA device too, and this runs in the main process
    at every step when there are no workers, so the training step's dropout
    would restart from each batch's seed (and differ from a run with
    workers)."""
    states = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        np.random.seed(seed)
        random.seed(seed)
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(states[0])
            random.setstate(states[1])


class SharedSpatiallyRegularSampler(SemSegSpatiallyRegularSampler):
    """SemSegSpatiallyRegularSampler whose training/validation spheres are
    chosen in the main process by `next_request` (the name is kept for the
    configs that name it). The test split is swept as by the stock sampler.
    """

    def initialize_with_dataloader(self, dataloader):
        """As the stock sampler (a small random initial coverage per point,
        drawn cloud by cloud), keeping for the training splits each cloud's
        points and search tree, to choose spheres: every cloud is read
        once."""
        self.length = len(dataloader)
        keep = self.split in TRAINING_SPLITS
        self._clouds, self.possibilities = [], []
        self.clouds = CloudStore() if keep else None
        for index in range(len(self.dataset)):
            data = preprocessed_cloud(dataloader, index)
            if keep:
                self._clouds.append((data['point'], data['search_tree']))
                self.clouds.add(data)
            self.possibilities.append(np.random.rand(len(data['point'])) * 1e-3)
        self.min_possibilities = [float(p.min()) for p in self.possibilities]
        self.coverage = Coverage(self.possibilities)
        self.seed, self.epoch, self.drawn = 0, 0, 0
        self.sphere = None

    def configure(self, radius, min_points, max_points, seed):
        """The model's sphere radius and point budget (KPFCNN: in_radius,
        min_in_points, min(batch_limit, max_in_points)) and the run's seed."""
        self.sphere = (float(radius), int(min_points), int(max_points))
        self.seed = int(seed)

    def start_epoch(self, epoch):
        self.epoch, self.drawn = int(epoch), 0

    def _cloud(self, cloud):
        """(points [N, 3], search tree) of a preprocessed training cloud."""
        return self._clouds[cloud]

    def next_request(self):
        """The next sphere, chosen as the stock sampler and KPFCNN's transform
        do together: least covered cloud, its least covered point as centre,
        more centres while the sphere holds fewer than min_points."""
        if self.sphere is None:
            raise RuntimeError("SharedSpatiallyRegularSampler.configure() was "
                               "not called")
        radius, min_points, max_points = self.sphere
        cloud = self.coverage.least_covered_cloud()
        points, tree = self._cloud(cloud)
        centres, members, taken = [], [], 0
        while taken < min_points:
            centre = self.coverage.least_covered_point(cloud)
            indices = tree.query_radius(points[centre:centre + 1], r=radius)[0]
            if len(indices) < 2:
                self.coverage.bump(cloud, centre)
                continue
            distances2 = np.sum(np.square(
                (points[indices] - points[centre]).astype(np.float32)), axis=1)
            self.coverage.cover(cloud, indices, distances2)
            centres.append(centre)
            members.append(indices)
            taken += min(len(indices), max_points - taken)
        request = SphereRequest(cloud, tuple(centres),
                                sphere_seed(self.seed, self.epoch, self.drawn),
                                tuple(members))
        self.drawn += 1
        return request

    def state_dict(self):
        return {'coverage': self.coverage.state_dict()}

    def load_state_dict(self, state):
        self.coverage = Coverage.from_state_dict(state['coverage'])

    def get_point_sampler(self):
        """The test split's sampler; training and validation go through
        SphereRequests and SphereDataset instead."""
        if self.split in TRAINING_SPLITS:
            raise RuntimeError("training spheres are chosen by SphereRequests")
        return super().get_point_sampler()


class SphereRequests(torch.utils.data.Sampler):
    """The DataLoader's sampler: `length` SphereRequests an epoch, drawn in
    order in the main process; `skip(n)` draws the next epoch's first n and
    drops them (a resumed epoch replays the sampler to where it stopped)."""

    def __init__(self, sampler, length):
        self.sampler, self.length, self._skip = sampler, int(length), 0

    def __len__(self):
        return self.length

    def skip(self, count):
        self._skip = int(count)

    def __iter__(self):
        skip, self._skip = self._skip, 0
        for number in range(self.length):
            request = self.sampler.next_request()
            if number >= skip:
                yield request


class StackedSpheres:
    """KPFCNN's `trans_point_sampler` for the spheres of one SphereRequest,
    cropped beforehand and stacked: the transform gets the stacked crops as
    its cloud, and the sampler hands out one sphere after the other (its
    rows of the stack, in the order the crop shuffled them)."""

    def __init__(self, centres, lengths):
        self.centres = list(centres)
        self.bounds = list(zip(np.cumsum([0] + list(lengths[:-1])),
                               np.cumsum(lengths)))

    def __call__(self, pc=None, **unused):
        if not self.bounds:
            raise RuntimeError("the transform asked for more spheres than the "
                               "main process chose")
        start, stop = self.bounds.pop(0)
        return (pc[start:stop], np.arange(start, stop),
                self.centres.pop(0).reshape(1, -1))


def sphere_crop(cloud, request):
    """(crop, sampler, rows): the points of every sphere of `request` cut
    from `cloud` ({'point', 'feat', 'label', ...} arrays), each sphere's
    points in a seeded random order as the stock sampler shuffles them,
    stacked; the StackedSpheres sampler that hands them to KPFCNN's
    transform; rows [n]: the cloud's index of each row of the stack."""
    rng = np.random.default_rng(request.seed)
    members = []
    for indices in request.members:
        indices = np.array(indices)
        rng.shuffle(indices)
        members.append(indices)
    rows = np.concatenate(members)
    crop = {key: (value[rows] if key in ('point', 'feat', 'label')
                  and value is not None else value)
            for key, value in cloud.items()}
    crop['search_tree'] = None
    centres = [np.asarray(cloud['point'][c]) for c in request.centres]
    return crop, StackedSpheres(centres, [len(m) for m in members]), rows


class SphereTransform:
    """The model's transform for a requested sphere, cropped beforehand
    (picklable: a worker gets the model and this object once, when it
    starts)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, crop, attr, sampler, rows):
        """KPFCNN's transform of the stacked crop; its per-sphere indices
        (`r_mask_list`) given back as indices of the cloud, and no copy of
        the cloud's labels per sphere (`val_labels_list`: Open3D-ML's test
        loop reads it, no training step does)."""
        self.model.trans_point_sampler = sampler
        item = self.model.transform(crop, attr)
        item['r_mask_list'] = [rows[mask] for mask in item['r_mask_list']]
        item['val_labels_list'] = []
        return item


def data_model(model):
    """The data side of `model`, for DataLoader workers: a shallow copy that
    keeps its cfg and methods (preprocess, transform, ncm_collate) and
    nothing that holds a tensor (no parameters, buffers, weighted
    submodules, logged loss terms or the NCM loss's last KL, at any depth
    of its attributes), on the CPU.

    A worker unpickling a CUDA tensor would initialise CUDA in a process
    forked from the fork server (and open a CUDA context per worker just to
    hold a few scalars): workers must receive no tensor at all."""
    bare = _without_tensors(model)
    bare.__dict__.pop('trans_point_sampler', None)
    if 'device' in bare.__dict__:
        bare.device = torch.device('cpu')
    return bare


def _without_tensors(module):
    """A copy of `module` with no tensor-holding attribute, and only its
    weightless submodules (themselves copied the same way)."""
    bare = type(module).__new__(type(module))
    bare.__dict__.update({key: value for key, value in module.__dict__.items()
                          if not holds_tensor(value)})
    bare.__dict__.update(_parameters={}, _buffers={}, _modules={
        name: _without_tensors(child)
        for name, child in module._modules.items()
        if child is not None and next(child.parameters(), None) is None
        and next(child.buffers(), None) is None})
    return bare


def holds_tensor(value, depth=0):
    """True when `value` is a tensor or a container holding one (a few
    levels deep: the dicts and lists of logged terms)."""
    if isinstance(value, torch.Tensor):
        return True
    if depth >= 4:
        return False
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, (list, tuple, set, frozenset)):
        return False
    return any(holds_tensor(item, depth + 1) for item in value)


def preprocessed_by(state, bare):
    """The pickled state of a TorchDataloader whose preprocessing (direct or
    through Open3D-ML's cache) runs on `bare`, a data_model copy."""
    if state.get('preprocess') is not None:
        state['preprocess'] = bare.preprocess
    if state.get('cache_convert') is not None:
        state['cache_convert'] = copy.copy(state['cache_convert'])
        state['cache_convert'].func = bare.preprocess
    return state


class SphereDataset(TorchDataloader):
    """TorchDataloader whose index is a SphereRequest: the item is the
    requested sphere of the requested cloud, cropped from the cloud's
    memory-mapped arrays (the sampler's CloudStore) with the points the
    request holds, its random draws seeded by the request. A worker
    receives it with a parameter-free copy of the model and the store's
    file names."""

    def __init__(self, *args, model=None, sampler=None, **kwargs):
        self.sphere_transform = SphereTransform(model)
        super().__init__(*args, transform=self.sphere_transform,
                         sampler=sampler, **kwargs)
        self.clouds = sampler.clouds

    def __getstate__(self):
        state = dict(self.__dict__)
        bare = data_model(self.sphere_transform.model)
        state['sphere_transform'] = state['transform'] = SphereTransform(bare)
        return preprocessed_by(state, bare)

    def __getitem__(self, request):
        if not isinstance(request, SphereRequest):
            raise TypeError(f"SphereDataset takes SphereRequests, got "
                            f"{type(request).__name__}")
        attr = self.dataset.get_attr(request.cloud)
        crop, sampler, rows = sphere_crop(self.clouds.cloud(request.cloud),
                                          request)
        with seeded(request.seed):
            data = self.sphere_transform(crop, attr, sampler, rows)
        # The batcher seeds its own random draws (KPConv's randomly oriented
        # pooling grids) from the seeds of the batch's spheres.
        return {'data': data, 'attr': {**attr, 'sphere_seed': request.seed}}


def worker_init(worker_id, main_pid=None):
    """Leave Ctrl-C to the main process, end with it, and use one core.

    A terminal sends SIGINT to the whole process group, and a worker that
    died of it would make the main process fail with "DataLoader worker
    exited unexpectedly" instead of stopping at the next step and saving a
    checkpoint. A worker started by the fork server is not the main
    process's child, so torch's own check (is my parent alive?) never sees
    the main process die (SIGKILL, the OOM killer): a thread of the worker
    watches `main_pid` and ends the worker when it is gone. (Open3D-ML's own
    worker_init_fn overflows on numpy 2; items are seeded by their request.)
    """
    import signal
    import threading

    import open3d
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker is one core's worth of work: torch gives it one thread, and
    # Open3D's radius searches (TBB) would otherwise spread over every core
    # and take the training step's.
    open3d.utility.set_max_threads(1)
    if main_pid is not None:
        threading.Thread(target=_exit_with, args=(main_pid,), daemon=True,
                         name='ncm-main-watch').start()


def _exit_with(pid, interval=2.0):
    """End this process when process `pid` has ended (a pidfd where Linux
    has them: it cannot mistake a new process that got the same pid)."""
    import os
    import select
    import time
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):
        handle = None
    while True:
        if handle is not None:
            if select.select([handle], [], [], None)[0]:
                os._exit(0)
            continue
        time.sleep(interval)
        try:
            os.kill(pid, 0)
        except OSError:
            os._exit(0)


def _reduce_config(config):
    return Config, (config._cfg_dict.to_dict(),)


# Open3D-ML's Config cannot be unpickled (its __setstate__ reads an attribute
# it has not set yet, through __getattr__, recursing until the stack is
# full), and every dataset and model holds one: pickle it as its dict.
copyreg.pickle(Config, _reduce_config)


def worker_context():
    """The multiprocessing context DataLoader workers start from: the fork
    server, started (once per process) with no visible CUDA device.

    Its preload imports ncm_plugin, hence open3d, whose CUDA build calls
    cudaGetDeviceCount and torch.cuda.is_available() on import: a process
    forked after that cannot use CUDA, and workers need none (they get no
    tensor, see `data_model`). Hiding the devices from the server keeps CUDA
    out of it and of every worker."""
    import multiprocessing
    from multiprocessing import forkserver
    context = multiprocessing.get_context(WORKER_START_METHOD)
    context.set_forkserver_preload(WORKER_PRELOAD)
    with environment(**WORKER_ENVIRONMENT):
        forkserver.ensure_running()
    return context


# The fork server's (and so every worker's) environment beside the trainer's.
WORKER_ENVIRONMENT = {'CUDA_VISIBLE_DEVICES': ''}


@contextmanager
def environment(**values):
    """os.environ with `values` set inside the block (the fork server is a
    new interpreter that inherits the environment when it starts)."""
    import os
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


SAMPLER._register_module(SharedSpatiallyRegularSampler)
