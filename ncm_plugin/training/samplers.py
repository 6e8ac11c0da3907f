"""A spatially regular sampler whose state survives DataLoader workers.

Open3D-ML's SemSegSpatiallyRegularSampler keeps its sampling state (the
per-point "possibilities", each cloud's minimum and the current `cloud_id`)
in plain Python attributes. With `num_workers > 0` every worker updates its
own copy: the main process then never sees a cloud being covered and keeps
choosing the same one, and the workers read a stale `cloud_id`. Here the
state lives in shared memory and the process that loads an item chooses its
cloud (the least covered one, as the stock sampler) and its sphere centre
under a lock, as KPConv's own loader does; the indices the main process
prefetches for the workers would otherwise all name the same cloud.
"""
import multiprocessing

import numpy as np
import torch
from open3d._ml3d.datasets.samplers import SemSegSpatiallyRegularSampler
from open3d._ml3d.torch.dataloaders import TorchDataloader
from open3d._ml3d.utils import SAMPLER

# Workers are forked: the samplers' point-sampling closures cannot be pickled
# (so 'spawn' and 'forkserver' fail) and fork shares the state below for free.
WORKER_START_METHOD = 'fork'
# Splits the stock sampler draws from at random (the others are swept in order).
TRAINING_SPLITS = ('train', 'validation', 'valid', 'training')


class SharedSpatiallyRegularSampler(SemSegSpatiallyRegularSampler):
    """SemSegSpatiallyRegularSampler with its state in shared memory."""

    def initialize_with_dataloader(self, dataloader):
        super().initialize_with_dataloader(dataloader)
        sizes = [len(p) for p in self.possibilities]
        flat = torch.from_numpy(np.concatenate(self.possibilities))
        self._shared = (flat.share_memory_(),
                        torch.tensor(self.min_possibilities,
                                     dtype=torch.float64).share_memory_())
        # numpy views on the shared tensors: the stock code indexes them.
        self.possibilities = np.split(self._shared[0].numpy(),
                                      np.cumsum(sizes)[:-1])
        self.min_possibilities = self._shared[1].numpy()
        self._lock = multiprocessing.get_context(WORKER_START_METHOD).Lock()

    def choose_cloud(self):
        """The least covered cloud, read at the moment an item is loaded."""
        with self._lock:
            return int(np.argmin(self.min_possibilities))

    def get_point_sampler(self):
        sample = super().get_point_sampler()
        lock = self._lock

        def locked_sample(**kwargs):
            with lock:
                return sample(**kwargs)

        return locked_sample


class CloudAwareDataloader(TorchDataloader):
    """TorchDataloader that sets the sampler's cloud where the item is loaded.

    The stock point sampler reads `sampler.cloud_id`, which the cloud sampler
    sets in the main process; a worker must set it itself before sampling.
    With a SharedSpatiallyRegularSampler the cloud is chosen here, from the
    shared state, rather than taken from the prefetched index.
    """

    def __init__(self, *args, sampler=None, **kwargs):
        super().__init__(*args, sampler=sampler, **kwargs)
        self.sampler = sampler

    def __getitem__(self, index):
        if isinstance(self.sampler, SharedSpatiallyRegularSampler) and \
                self.sampler.split in TRAINING_SPLITS:
            index = self.sampler.choose_cloud()
        if self.sampler is not None:
            self.sampler.cloud_id = index % len(self.dataset)
        return super().__getitem__(index)


def seed_worker(worker_id):
    """Give numpy and random a distinct seed in every worker, and leave
    Ctrl-C to the main process.

    (Open3D-ML's own worker_init_fn overflows on numpy 2.) A terminal sends
    SIGINT to the whole process group: a worker that died of it would make
    the main process fail with "DataLoader worker exited unexpectedly"
    instead of stopping at the next step and saving a checkpoint.
    """
    import random
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


SAMPLER._register_module(SharedSpatiallyRegularSampler)
