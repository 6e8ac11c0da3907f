"""torch.distributed for the pipeline: ranks from torchrun, and the few
collective operations the training loop needs.

A run is distributed when it is launched by torchrun with more than one
process (WORLD_SIZE > 1):

    torchrun --nproc_per_node 4 scripts/run_pipeline.py torch -c CONFIG --device cuda
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d \
        --rdzv_endpoint HOST:29400 scripts/run_pipeline.py torch -c CONFIG --device cuda

torchrun exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
the process group is initialised from them (env://), with nccl on CUDA and
gloo on the CPU. (Open3D-ML's own runner exports PRIMARY_ADDR/PRIMARY_PORT,
which torch does not read: `adopt_primary_address` maps them.)

Sampling design: each rank runs its own SharedSpatiallyRegularSampler, seeded
with (run seed, rank), and draws 1/world_size of the epoch's spheres. The
ranks do not exchange sampling state: merging it every step would cost a
collective per sphere and tie the ranks' data loading together, while
independent samplers each tend to even coverage of the whole training set,
and their different initial noise makes them choose different clouds and
centres from the first sphere on. Sharding clouds between ranks instead
would unbalance ranks (rooms differ by 100x in size) and fails when there
are fewer clouds than ranks.
"""
import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Collectives wait this long for a slow rank (e.g. rank 0 writing a large
# checkpoint, or a long first-run data conversion) before failing.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a run: rank among world_size processes,
    local_rank among those of its node (= its GPU index)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def primary(self):
        """Only the primary rank writes logs, TensorBoard and checkpoints."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ=None):
        """Ranks set by torchrun; a plain `python` run is rank 0 of 1."""
        environ = os.environ if environ is None else environ
        world_size = int(environ.get('WORLD_SIZE', 1))
        if world_size <= 1:
            return cls()
        adopt_primary_address(environ)
        missing = [k for k in ('RANK', 'MASTER_ADDR', 'MASTER_PORT')
                   if k not in environ]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} but {missing} is not set: launch "
                f"distributed runs with torchrun")
        return cls(int(environ['RANK']), world_size,
                   int(environ.get('LOCAL_RANK', 0)))


def adopt_primary_address(environ):
    """Copy PRIMARY_ADDR/PRIMARY_PORT to MASTER_ADDR/MASTER_PORT when only
    the former are set.

    Open3D-ML's own launcher (scripts/run_pipeline.py's process-group set-up)
    exports the rendezvous address as PRIMARY_*, but torch's env://
    initialisation reads MASTER_*, so its distributed runs cannot meet. A
    MASTER_* variable that is set (torchrun always sets both) wins.
    """
    for primary, master in (('PRIMARY_ADDR', 'MASTER_ADDR'),
                            ('PRIMARY_PORT', 'MASTER_PORT')):
        if primary in environ and master not in environ:
            environ[master] = environ[primary]
            log.info("%s=%s taken from %s (torch reads %s)", master,
                     environ[primary], primary, master)


def backend_for(device):
    """nccl for CUDA devices, gloo for the CPU."""
    return 'nccl' if torch.device(device).type == 'cuda' else 'gloo'


def device_for(ranks, device):
    """The device of this rank: its own GPU on CUDA, cuda:LOCAL_RANK when
    the process sees every GPU of its node, else LOCAL_RANK modulo the GPUs
    it sees (SLURM's `--gpus-per-task=1` shows each process one GPU, as
    cuda:0)."""
    device = torch.device(device)
    if device.type != 'cuda' or not ranks.distributed:
        return device
    visible = torch.cuda.device_count()
    if visible < 1:
        raise RuntimeError(f"rank {ranks.rank} sees no CUDA device "
                           f"(CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    index = ranks.local_rank % visible
    if index != ranks.local_rank:
        log.info("Rank %d (LOCAL_RANK %d) sees %d GPU(s): it uses cuda:%d",
                 ranks.rank, ranks.local_rank, visible, index)
    device = torch.device('cuda', index)
    torch.cuda.set_device(device)
    return device


def init_process_group(ranks, device):
    """Join the process group (env://) unless the caller already did."""
    if dist.is_initialized():
        return False
    backend = backend_for(device)
    kwargs = {'device_id': device} if backend == 'nccl' else {}
    dist.init_process_group(backend, timeout=TIMEOUT, **kwargs)
    log.info("Rank %d of %d joined the %s process group", ranks.rank,
             ranks.world_size, backend)
    return True


def rank_seed(seed, rank):
    """A 31-bit seed for `rank` derived from the run's `seed`: reproducible,
    and unrelated between ranks (numpy's SeedSequence mixes both)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0] >> 1)


def steps_per_rank(steps, world_size, split_length=None):
    """Items (spheres) a rank samples per epoch so the ranks together sample
    `steps`, or, without `steps_per_epoch_*`, the split's `split_length`
    items once (rounded up: every rank must run the same number of
    batches). None in a single process without steps: the split's own
    length."""
    if steps is None:
        if world_size == 1 or split_length is None:
            return None
        steps = split_length
    return -(-int(steps) // world_size)


def all_reduce_sum(array, device):
    """Sum of a numpy array over all ranks (every rank gets the sum; the
    array itself is left as it is)."""
    tensor = torch.tensor(np.asarray(array), device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def any_rank(flag, device):
    """True on every rank if `flag` is true on any rank."""
    tensor = torch.tensor([int(bool(flag))], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_to_primary(obj):
    """[obj of rank 0, obj of rank 1, ...] on rank 0, None on the others
    (picklable objects; a checkpoint's per-rank states, which only rank 0
    writes, and which hold every point's coverage: no copy on every rank)."""
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def scatter_from_primary(objs):
    """Element `rank` of rank 0's list `objs` on each rank (the others pass
    None)."""
    box = [None]
    dist.scatter_object_list(box, objs, src=0)
    return box[0]


def broadcast_object(obj, src=0):
    """`obj` of rank `src` on every rank (e.g. a checkpoint read by rank 0,
    so that nodes without a shared file system resume too)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module, src=0):
    """Give every rank the buffers (batch-norm running statistics) of `src`.

    DDP broadcasts them at the start of each training forward, but every rank
    then updates its copy with its own batch; doing it before validation makes
    all ranks validate the model that rank 0 saves.
    """
    for buffer in module.buffers():
        dist.broadcast(buffer, src=src)


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()


def wait_for_all(hours=24):
    """A barrier that waits as long as rank 0 tests after training (the
    default collective timeout would end the other ranks' wait first); over
    a gloo group of its own, created here by every rank at once."""
    group = dist.new_group(backend='gloo', timeout=timedelta(hours=hours))
    dist.barrier(group=group)


# How long the other ranks wait for rank 0 to prepare the data (a first
# conversion of a large dataset) before they give up, saying so.
RANK_ZERO_FIRST_TIMEOUT = timedelta(hours=3)


class RankZeroFailed(RuntimeError):
    """Rank 0 failed, or did not finish in time, in a rank_zero_first block."""


@contextlib.contextmanager
def rank_zero_first(ranks, timeout=RANK_ZERO_FIRST_TIMEOUT):
    """Rank 0 runs the block first, the other ranks after it: for work that
    writes shared files non-atomically (Open3D-ML's preprocessing cache,
    which every rank would otherwise write, and read half-written).

    Rank 0 tells the others how the block ended: when it raised, they raise
    RankZeroFailed with its error at once; when rank 0 says nothing within
    `timeout` (it died, it hangs), they raise RankZeroFailed then."""
    if not ranks.distributed:
        yield
        return
    group = dist.new_group(backend='gloo', timeout=timeout)
    if ranks.primary:
        try:
            yield
        except BaseException as error:
            _send_outcome(group, f"{type(error).__name__}: {error}")
            raise
        _send_outcome(group, None)
        return
    box = [None]
    try:
        dist.broadcast_object_list(box, src=0, group=group)
    except RuntimeError as error:
        raise RankZeroFailed(
            f"rank {ranks.rank} waited {timeout} for rank 0 to prepare the "
            f"data and heard nothing ({str(error).splitlines()[0]}); see "
            f"rank 0's log") from None
    if box[0] is not None:
        raise RankZeroFailed(f"rank 0 failed while preparing the data "
                             f"({box[0]}); rank {ranks.rank} stops too")
    yield


def _send_outcome(group, message):
    dist.broadcast_object_list([message], src=0, group=group)
