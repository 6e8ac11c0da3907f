"""NCMSemanticSegmentation: Open3D-ML's semantic-segmentation pipeline, plus
what its own cannot do for the NCM models (subclasses of the stock ones).

- The batcher choice, ConcatBatcher and the 3D summary dispatch on the model
  *name* ("KPFCNN", "RandLANet", ...); here they dispatch on the class, so
  NCMKPFCNN (or any KPFCNN subclass) and the other NCM models work; KPFCNN's
  batcher also carries scene-level NCM targets (scene_target.py), the
  others' add what their NCM term needs (`ncm_collate`, batcher.py).
- The training loop logs every loss term (cross entropy, regularizer, NCM)
  to the log file and TensorBoard.
- It refuses to train on degenerate spheres (the stock random sampler with
  KPFCNN silently yields 3-point spheres).
- DataLoader workers work and never hang: sphere choices made in order in
  the main process, items seeded per sphere, workers started once per run
  from a fork server, collation on the CPU, pinned copies on CUDA (see
  samplers.py and batcher.py); a watchdog turns a stuck step into an error
  (watchdog.py).
- Distributed training under torchrun (DistributedDataParallel, nccl on
  CUDA, gloo on the CPU; see distributed.py for the sampling design).
- Crash-safe checkpoints (checkpoints.py) and an exact resume: model,
  optimizer, scheduler, epoch, random states, best mIoU and the samplers'
  coverage.
- SIGINT/SIGTERM stop at the next step with a checkpoint (interrupts.py).
- Optional mixed precision on CUDA (precision.py).
- Testing saves every cloud's prediction and ends with results.json/.md/.csv
  (see evaluation.py).
"""
import contextlib
import functools
import json
import logging
import os
import random
from datetime import datetime
from os.path import isabs, join
from pathlib import Path

import numpy as np
import torch
from open3d._ml3d.datasets.samplers import SemSegRandomSampler
from open3d._ml3d.torch.dataloaders import TorchDataloader, get_sampler
from open3d._ml3d.torch.models.kpconv import KPFCNN
from open3d._ml3d.torch.models.randlanet import RandLANet
from open3d._ml3d.torch.modules.losses import SemSegLoss
from open3d._ml3d.torch.modules.metrics import SemSegMetric
from open3d._ml3d.torch.pipelines import SemanticSegmentation
from open3d._ml3d.utils import PIPELINE, get_runid
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from . import checkpoints, distributed
from ..evaluation.recorder import TestRecorder
from ..models import NCMTerm
from .batcher import (DeviceBatcher, NCMConcatBatcher, NCMStockBatcher,
                      host_view, move_batch)
from .devices import device_report, require_device
from .interrupts import StepHook, StopRequest
from .items import ItemRequests, SeededItemDataset
from .options import PipelineOptions
from .precision import MixedPrecision
from .samplers import (SharedSpatiallyRegularSampler, SphereDataset,
                       SphereRequests, preprocessed_cloud, worker_context,
                       worker_init)
from .totals import EpochTiming, EpochTotals, NonFiniteLoss
from .watchdog import Watchdog, WorkerDied, started, worker_errors

log = logging.getLogger(__name__)

# A training sphere must hold at least this fraction of the points that its
# cloud has within model.in_radius of its centre (capped by the point limits).
MIN_SPHERE_FRACTION = 0.05
BEST_METRIC = 'validation mIoU'


class DegenerateSpheresError(RuntimeError):
    """Training spheres hold far fewer points than their radius implies."""


def sphere_budget(model_cfg):
    """(radius, min points, max points) of a KPFCNN training sphere, as its
    transform reads them."""
    max_points = min(model_cfg.batch_limit, model_cfg.max_in_points)
    min_points = min(model_cfg.get('min_in_points', 3), model_cfg.max_in_points)
    return model_cfg.in_radius, min_points, max_points


def check_spheres(lengths, inside, model_cfg, sampler_name):
    """Raise DegenerateSpheresError when the spheres of a batch hold far
    fewer points than their clouds have within the sphere radius.

    lengths [S]: points of each sphere of the batch; inside [S]: points of
    its cloud (as the model preprocessed it) within model.in_radius of its
    centre. What this catches is a sampler that does not crop spheres (the
    stock random sampler gives KPFCNN spheres of 3 points); sparse clouds
    (airborne LiDAR, distant scans) hold few points inside the radius and
    pass, since their spheres hold all of them."""
    max_points = min(model_cfg.max_in_points, model_cfg.batch_limit)
    lengths = np.asarray(lengths, dtype=np.float64)
    wanted = np.minimum(np.asarray(inside, dtype=np.float64), max_points)
    if lengths.mean() < MIN_SPHERE_FRACTION * wanted.mean():
        raise DegenerateSpheresError(
            f"training spheres hold {lengths.mean():.0f} points on average "
            f"(sizes {list(map(int, lengths))}), but their clouds hold "
            f"{wanted.mean():.0f} on average within model.in_radius="
            f"{model_cfg.in_radius} of the spheres' centres (at most "
            f"{max_points}, the model's point limits): the sampler "
            f"'{sampler_name}' does not crop spheres for KPFCNN; set "
            f"dataset.sampler.name to SharedSpatiallyRegularSampler (or "
            f"SemSegSpatiallyRegularSampler).")
    log.info("Training spheres: %.0f points on average (%s); their clouds "
             "hold %.0f within the radius", lengths.mean(),
             list(map(int, lengths)), wanted.mean())


def points_inside(loader, attrs, centres, radius):
    """[S] points of each sphere's cloud within `radius` of its centre.

    attrs: the batch's items' attributes (one sphere each); centres [S, 3]
    in the cloud's coordinates. The clouds are read as the model
    preprocessed them, once per check."""
    split = loader.dataset.dataset
    index_of = {split.get_attr(i)['name']: i for i in range(len(split))}
    counts = []
    for attr, centre in zip(attrs, centres):
        data = preprocessed_cloud(loader.dataset, index_of[attr['name']])
        found = data['search_tree'].query_radius(
            np.asarray(centre, dtype=np.float64).reshape(1, 3), r=radius)[0]
        counts.append(len(found))
    return np.array(counts)


# Backbones whose training runs Open3D's own CUDA kernels with atomic
# accumulation (SparseConvUnet's sparse convolutions, PVCNN's voxelisation
# and devoxelisation), which torch's deterministic mode does not reach.
NOT_DETERMINISTIC_ON_CUDA = ('SparseConvUnet', 'PVCNN')


def make_deterministic(device, model=None):
    """Deterministic kernels where torch has them (pipeline.deterministic).

    On CUDA this covers KPConv (KPFCNN), RandLA-Net and PointTransformer,
    whose ops are torch's (KPConv's gather backward then runs a sort-based
    scatter: slower, see docs/performance.md); SparseConvUnet and PVCNN
    stay non-deterministic there (a warning says so)."""
    if device.type == 'cuda':
        stock = (model.stock_name if isinstance(model, NCMTerm) else
                 type(model).__name__ if model is not None else None)
        if stock in NOT_DETERMINISTIC_ON_CUDA:
            log.warning("pipeline.deterministic: %s runs Open3D's own CUDA "
                        "kernels, which accumulate atomically and are not "
                        "made deterministic; two runs will differ in the "
                        "last bits", stock)
        # cuBLAS needs a fixed workspace for reproducible matrix products.
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
    log.info("Deterministic algorithms on (pipeline.deterministic)")


@contextlib.contextmanager
def stock_model_name(model):
    """Let Open3D-ML code that dispatches on the model name see the stock
    model's ('KPFCNN' for NCMKPFCNN, 'RandLANet' for NCMRandLANet, ...).
    Open3D-ML's Config reads items but has no item assignment: the name is
    changed in the dict it wraps."""
    settings = model.cfg._cfg_dict
    name = settings['name']
    if isinstance(model, NCMTerm):
        settings['name'] = model.stock_name
    elif isinstance(model, KPFCNN):
        settings['name'] = 'KPFCNN'
    try:
        yield
    finally:
        settings['name'] = name


def unlabelled_loss(results):
    """The loss of a step whose batch holds no labelled point: zero, in
    float32 (an fp16 sum of the logits can overflow to inf, and inf * 0 is
    NaN), still a function of every output so that the backward (and DDP's
    all-reduce of every rank) runs as in any step."""
    return results.float().sum() * 0.0


class _NoWriter:
    """The TensorBoard writer of ranks other than 0: writes nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class NCMSemanticSegmentation(SemanticSegmentation):
    """SemanticSegmentation for NCMKPFCNN (and other KPFCNN subclasses) and
    the other NCM models (models/).

    Extra pipeline settings: see `PipelineOptions` (num_workers, pin_memory,
    test_after_train, keep_checkpoints, amp, sync_batchnorm,
    find_unused_parameters); grad_clip_norm via model.grad_clip_norm as stock.

    Under torchrun (WORLD_SIZE > 1) the pipeline joins the process group
    itself: Open3D-ML's BasePipeline refuses distributed SemanticSegmentation
    and distributed CPU runs, so it is told `distributed=False` and this
    class keeps its own `ranks`/`distributed`. Each rank trains on
    steps_per_epoch / world_size spheres of an epoch, with its own seed;
    metrics and losses are reduced over all ranks; only rank 0 writes logs,
    TensorBoard, checkpoints and test results.
    """

    def __init__(self, model, dataset=None, name='NCMSemanticSegmentation',
                 **kwargs):
        self.options = PipelineOptions.from_dict(kwargs)
        self.ranks = distributed.Ranks.from_env()
        require_device(kwargs.get('device'))  # not Open3D-ML's CPU fallback
        super().__init__(model, dataset=dataset, name=name, distributed=False,
                         rank=self.ranks.rank, **kwargs)
        self.distributed = self.ranks.distributed
        self._owns_process_group = False
        if self.distributed:
            if self.options.sync_batchnorm and self.device.type != 'cuda':
                raise ValueError(
                    "pipeline.sync_batchnorm needs --device cuda: torch's "
                    "SyncBatchNorm has no CPU implementation (set it to false "
                    "for gloo/CPU runs)")
            self.device = distributed.device_for(self.ranks, self.device)
            self._owns_process_group = distributed.init_process_group(
                self.ranks, self.device)
        elif self.options.sync_batchnorm:
            log.info("pipeline.sync_batchnorm has no effect in a single "
                     "process")
        self.best = None
        self.stop = StopRequest()
        # The run's seed on this rank: global generators, sphere choices and
        # per-sphere augmentation derive from it.
        run_seed = int(self.rng.integers(np.iinfo(np.int32).max))
        self.seed = distributed.rank_seed(run_seed, self.ranks.rank)
        # The same on every rank: the epoch's order of items, which the ranks
        # share out (rank 0's seed, so a single process is unchanged).
        self.shared_seed = distributed.rank_seed(run_seed, 0)
        self.watchdog = Watchdog(self.options.step_timeout)
        self.epoch_timings = []
        # {(phase, epoch): steps whose batch held no labelled point}
        self.unlabelled_steps = {}
        self.step_hook = StepHook()

    # -- dispatch on the class, not the name ------------------------------
    def training_batcher(self):
        """The batcher of the training and validation loaders: batches
        collated on the CPU (in a worker or here) with what the NCM term
        needs; the loops copy them to the device. KPFCNN: NCMConcatBatcher;
        the other NCM models: their stock batcher + the model's
        ncm_collate."""
        return self._cpu_batcher(ncm=True)

    def get_batcher(self, device, split='training'):
        """The batcher of Open3D-ML's own test and inference loops (the
        stock `run_test` and `run_inference` call this): collated on the CPU
        without the NCM's lists (inference never reads them), then moved to
        `device`, since `run_inference` never moves a batch."""
        return DeviceBatcher(self._cpu_batcher(ncm=False, split=split),
                             device)

    def _cpu_batcher(self, ncm, split='training'):
        if isinstance(self.model, KPFCNN):
            loss = getattr(self.model, 'ncm_loss', None)
            knn = None
            if ncm and loss is not None and loss.cfg.neighborhood == 'knn' \
                    and loss.cfg.weight > 0:
                knn = (loss.cfg.layer, loss.cfg.k)
            return NCMConcatBatcher(sort_neighbors=self.options.deterministic,
                                    ncm_knn=knn)
        if isinstance(self.model, NCMTerm):
            return NCMStockBatcher(self.model, ncm=ncm)
        return super().get_batcher(torch.device('cpu'), split)

    def get_3d_summary(self, results, input_data, epoch, save_gt=True):
        if isinstance(self.model, RandLANet) and 'xyz' not in input_data:
            # The stock summary reads RandLA-Net's points as 'xyz'; its
            # batches call them 'coords'.
            input_data = {**input_data, 'xyz': input_data['coords']}
        if isinstance(self.model, KPFCNN):
            # The stock summary reads KPFCNN's lengths with .numpy(), which
            # fails once the batch is on the GPU: it gets their host copy.
            input_data = host_view(input_data)
        with stock_model_name(self.model):
            return super().get_3d_summary(results, input_data, epoch, save_gt)

    # -- data -------------------------------------------------------------
    def _loader(self, split, batch_size, steps_key):
        """DataLoader over a split; batches collated on the CPU, by workers
        (if any) that start once per run.

        Distributed: this rank's share of the epoch's spheres."""
        model, dataset = self.model, self.dataset
        num_workers = self.options.num_workers
        split_data = dataset.get_split(split)
        sampler = split_data.sampler
        common = dict(
            dataset=split_data, preprocess=model.preprocess, sampler=sampler,
            use_cache=dataset.cfg.use_cache,
            steps_per_epoch=distributed.steps_per_rank(
                dataset.cfg.get(steps_key, None), self.ranks.world_size,
                len(split_data)))
        if isinstance(sampler, SharedSpatiallyRegularSampler):
            if not isinstance(model, KPFCNN):
                raise ValueError(
                    f"dataset.sampler.name SharedSpatiallyRegularSampler "
                    f"crops KPFCNN spheres (model.in_radius and point "
                    f"limits); {type(model).__name__} chooses its own "
                    f"points: use its stock config's sampler "
                    f"(SemSegRandomSampler or SemSegSpatiallyRegularSampler)")
            torch_split = SphereDataset(model=model, **common)
            sampler.configure(*sphere_budget(model.cfg), seed=self.seed)
            requests = SphereRequests(sampler, len(torch_split))
        elif not isinstance(model, KPFCNN) and \
                type(sampler) is SemSegRandomSampler:
            # Backbones that choose their own points: items requested and
            # seeded in the main process (items.py), with or without workers.
            torch_split = SeededItemDataset(model=model, **common)
            requests = ItemRequests(len(split_data), len(torch_split),
                                    self.seed, self.shared_seed, self.ranks)
        elif num_workers > 0:
            raise ValueError(
                f"pipeline.num_workers={num_workers} needs "
                f"dataset.sampler.name SharedSpatiallyRegularSampler (KPFCNN) "
                f"or SemSegRandomSampler (the other backbones); "
                f"{type(sampler).__name__} chooses its points where they are "
                f"loaded, so each worker would keep its own copy of its state")
        else:
            torch_split = TorchDataloader(transform=model.transform, **common)
            requests = get_sampler(sampler)
        workers = {}
        if num_workers > 0:
            workers = dict(num_workers=num_workers, persistent_workers=True,
                           multiprocessing_context=worker_context(),
                           worker_init_fn=functools.partial(
                               worker_init, main_pid=os.getpid()))
            # No DataLoader timeout: with one, torch waits that long for a
            # batch before it looks at its workers; without, it checks every
            # few seconds whether a worker died (killed, out of memory) and
            # says so. A stuck (live) worker is the watchdog's to report.
        # Its own generator: a DataLoader draws a seed for its workers each
        # time it starts an iteration (each epoch without persistent
        # workers), and from torch's global generator that would shift the
        # training step's draws (dropout) by the number of workers.
        loader = DataLoader(
            torch_split, batch_size=batch_size, sampler=requests,
            pin_memory=self.options.pin_memory and self.device.type == 'cuda',
            collate_fn=self.training_batcher().collate_fn,
            generator=torch.Generator().manual_seed(self.seed), **workers)
        return loader, sampler

    # -- training ---------------------------------------------------------
    def _seed_everything(self):
        """torch, numpy and random seeded from the run's seed and the rank:
        reproducible, and a different sphere sequence on every rank."""
        seed = self.seed
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def _stop_requested(self, due=True):
        """SIGINT/SIGTERM on any rank; every rank gets the same answer, so
        they stop at the same step (a rank that stopped alone would leave the
        others waiting in DDP's all-reduce). Under torchrun the ranks agree
        only when `due` (every pipeline.check_every steps): the agreement is
        an all-reduce, a wait for the device."""
        if self.distributed:
            return due and distributed.any_rank(self.stop.requested,
                                                self.device)
        return self.stop.requested

    def _train_step(self, loss):
        clip = self.model.cfg.get('grad_clip_norm', -1)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward_and_step(loss, self.optimizer,
                                         self.model.parameters(), clip)

    def _start_epoch(self, loader, sampler, train, epoch, skip=0):
        """`loader`'s iterator for `epoch` less its first `skip` batches,
        its sampler set up as the epoch begins."""
        model = self.model
        if isinstance(sampler, SharedSpatiallyRegularSampler):
            sampler.start_epoch(epoch)
            if train:
                # A stop in this epoch saves this, and the resume replays it.
                self._epoch_start_sampler = sampler.state_dict()
            loader.sampler.skip(skip * loader.batch_size)
        elif isinstance(loader.sampler, ItemRequests):
            loader.sampler.start_epoch(epoch)
            loader.sampler.skip(skip * loader.batch_size)
        else:
            model.trans_point_sampler = sampler.get_point_sampler()
        return started(loader, 'training' if train else 'validation', epoch)

    def _start_ahead(self, loader, sampler, train, epoch):
        """Start `epoch` of a loader with workers before its turn: its
        workers, idle since their last batch, build its first batches
        while the main process finishes the phase before (the first batch
        of every phase would otherwise be waited for in full). Without
        workers nothing is built before it is asked for: no-op."""
        if loader is None or loader.num_workers == 0:
            return
        try:
            batches = self._start_epoch(loader, sampler, train, epoch)
        except WorkerDied as died:
            # Raised when the epoch's turn comes: the phase before it ends
            # first, and is saved.
            batches = died
        self._started_ahead['train' if train else 'valid'] = (epoch, batches)

    def _run_epoch(self, loader, sampler, loss_fn, train, epoch, skip=0,
                   before_last_step=None):
        """One pass over a loader, less its first `skip` batches;
        `before_last_step()` runs once the last batch has arrived (it starts
        the next phase ahead).

        Returns ({term: mean over steps and ranks}, batches done): fewer than
        len(loader) when a stop was requested (SIGINT/SIGTERM).
        """
        model, metric = self.model, (self.metric_train
                                     if train else self.metric_val)
        forward = self.train_model if train else model
        model.train(train)
        ahead = self._started_ahead.pop('train' if train else 'valid', None)
        if ahead is not None and ahead[0] == epoch and skip == 0:
            batches = ahead[1]
            if isinstance(batches, WorkerDied):
                raise batches
        else:
            batches = self._start_epoch(loader, sampler, train, epoch, skip)
        stage = 'train' if train else 'valid'
        phase = 'training' if train else 'validation'
        totals = EpochTotals(model.cfg.num_classes, self.device, phase, epoch)
        check_every = self.options.check_every
        done, todo = skip, len(loader) - skip
        self.watchdog.beat(epoch, done, phase)
        timing = EpochTiming(phase, epoch)
        with torch.set_grad_enabled(train):
            for inputs in tqdm(timing.wrap(worker_errors(
                    batches, todo, loader, phase, epoch)), total=todo,
                               desc=phase, disable=not self.ranks.primary):
                batch = inputs['data']
                if before_last_step is not None and done == len(loader) - 1:
                    before_last_step()
                if train and not self._spheres_checked and \
                        isinstance(model, KPFCNN):
                    self._check_spheres(loader, inputs, sampler)
                move_batch(batch, self.device)
                with self.precision.autocast():
                    results = forward(batch)
                    loss, gt_labels, predict_scores = model.get_loss(
                        loss_fn, results, inputs, self.device)
                # (The stock loss has already read the number of labelled
                # points on the host.)
                labelled = predict_scores.shape[0] > 0
                if not labelled:
                    loss = unlabelled_loss(results)
                if train:
                    self._train_step(loss)
                if labelled:
                    totals.add(done, {'loss': loss,
                                      **getattr(model, 'loss_terms', {})})
                    totals.add_predictions(predict_scores.detach(), gt_labels)
                else:
                    totals.declare(['loss', *getattr(model, 'loss_terms', {})])
                    totals.unlabelled_steps += 1
                if done == skip and self.ranks.primary and \
                        stage in self.cfg.get('summary').get('record_for', []):
                    self.summary[stage] = self.get_3d_summary(
                        results, batch, epoch)
                done += 1
                self.watchdog.beat(epoch, done, phase)
                if train:
                    self.step_hook.after_step(epoch, done, loader)
                due = done % check_every == 0
                if due:
                    self._check_finite(totals)
                if self._stop_requested(due):
                    break
        self._check_finite(totals)
        self.epoch_timings.append(timing.finish(done - skip))
        self._log_unlabelled(totals)
        metric.confusion_matrix = totals.confusion()
        metric.num_classes = model.cfg.num_classes
        self._reduce_metric(metric, stage)
        means = self._mean_over_ranks(totals)
        loss = means.pop('loss', float('nan'))
        if train:
            self.losses = [loss]
        else:
            self.valid_losses = [loss]
        return means, done

    def _log_unlabelled(self, totals):
        """One line per epoch: the steps (over all ranks) whose batch held
        no labelled point; they ran a zero loss and are left out of the
        epoch's means."""
        count = totals.unlabelled_steps
        if self.distributed:
            count = int(distributed.all_reduce_sum(np.array([count]),
                                                   self.device)[0])
        totals.unlabelled_steps = count
        if count:
            log.info("%s of epoch %d: %d step(s) without a labelled point "
                     "(unlabelled_steps; zero loss, left out of the means)",
                     totals.phase.capitalize(), totals.epoch, count)
        self.unlabelled_steps[(totals.phase, totals.epoch)] = count

    def _reduce_metric(self, metric, stage):
        """Sum the confusion matrices of all ranks into `metric`; keep this
        rank's own in `local_confusion[stage]`."""
        num_classes = self.model.cfg.num_classes
        local = metric.confusion_matrix
        if local is None:
            local = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.local_confusion[stage] = np.array(local, dtype=np.int64)
        if self.distributed:
            metric.confusion_matrix = distributed.all_reduce_sum(
                self.local_confusion[stage], self.device)
            metric.num_classes = num_classes

    def _check_spheres(self, loader, inputs, sampler):
        """check_spheres on the first training batch (on the CPU, before it
        moves to the device)."""
        batch, attrs = inputs['data'], inputs['attr']
        lengths = batch.lengths[0].numpy()
        self._spheres_checked = True
        if len(attrs) != len(lengths):
            log.info("Training spheres: %s points (an item holds several "
                     "spheres; not compared with their clouds)",
                     list(map(int, lengths)))
            return
        inside = points_inside(loader, attrs, batch.frame_centers.numpy(),
                               self.model.cfg.in_radius)
        check_spheres(lengths, inside, self.model.cfg, type(sampler).__name__)

    def _check_finite(self, totals):
        """Stop (every rank at once) when a loss term was not finite."""
        try:
            totals.check()
            failed = None
        except NonFiniteLoss as error:
            failed = error
        if self.distributed and distributed.any_rank(failed is not None,
                                                     self.device):
            failed = failed or NonFiniteLoss(
                f"a loss term is not finite on another rank at {totals.phase} "
                f"of epoch {totals.epoch} (its log names the term and step)")
        if failed is not None:
            raise failed

    def _mean_over_ranks(self, totals):
        """{term: mean over all ranks' steps} of an epoch's totals."""
        keys, sums = totals.local_sums()
        sums = np.array(sums, dtype=np.float64).reshape(-1, 2)
        if self.distributed:
            sums = distributed.all_reduce_sum(sums, self.device)
        return {k: float(s / n) if n else float('nan')
                for k, (s, n) in zip(keys, sums)}

    def _update_best(self, epoch):
        """Track the best validation mIoU seen so far (saved, resumed)."""
        if not getattr(self, 'valid_losses', None):
            return
        ious = self.metric_val.iou()
        if ious is None or np.isnan(ious[-1]):
            return
        value = float(ious[-1])
        if self.best is None or value > self.best['value']:
            self.best = {'metric': BEST_METRIC, 'value': value,
                         'epoch': epoch}
            log.info("New best %s: %.4f at epoch %d", BEST_METRIC, value,
                     epoch)

    def _log_confusion(self, epoch):
        matrix = self.metric_val.confusion_matrix
        if matrix is None or not self.valid_losses:
            return
        log.info("Validation confusion matrix, epoch %d (rows: label, "
                 "columns: prediction; summed over %d rank(s)): %s", epoch,
                 self.ranks.world_size, json.dumps(np.asarray(matrix).tolist()))

    def _open_logs(self):
        """Rank 0: the log file and a TensorBoard writer; others: no-ops."""
        if not self.ranks.primary:
            return None, _NoWriter()
        timestamp = datetime.now().strftime('%Y-%m-%d_%H-%M-%S')
        log_file_path = join(self.cfg.logs_dir, 'log_train_' + timestamp +
                             '.txt')
        log.info("%s", device_report(self.device))
        log.info("Logging in file : %s", log_file_path)
        handler = logging.FileHandler(log_file_path)
        logging.getLogger().addHandler(handler)
        writer = SummaryWriter(self._tensorboard_dir())
        self.save_config(writer)
        log.info("Writing summary in %s.", self.tensorboard_dir)
        return handler, writer

    def _prepare_model(self):
        """Device, SyncBatchNorm, optimizer; the DDP wrapper comes after the
        checkpoint is loaded into the bare model."""
        model = self.model
        model.device = self.device
        model.to(self.device)
        if self.distributed and self.options.sync_batchnorm:
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            log.info("Batch norm synchronised over %d ranks (SyncBatchNorm)",
                     self.ranks.world_size)
        self.optimizer, self.scheduler = model.get_optimizer(self.cfg)
        self.precision = MixedPrecision(self.options.amp, self.device)

    def _wrap_model(self):
        """DDP for the forward pass of training; `get_loss`, `preprocess`,
        `transform` and the state dict stay on the bare model."""
        if not self.distributed:
            return self.model
        return torch.nn.parallel.DistributedDataParallel(
            self.model,
            device_ids=[self.device.index] if self.device.type == 'cuda'
            else None,
            find_unused_parameters=self.options.find_unused_parameters)

    def run_train(self):
        """Train (and validate every epoch) as Open3D-ML does, logging each
        loss term, resuming from the newest readable checkpoint and stopping
        cleanly on SIGINT/SIGTERM."""
        self._seed_everything()
        if self.options.deterministic:
            make_deterministic(self.device, self.model)
        cfg = self.cfg
        self._prepare_model()
        handler, writer = self._open_logs()
        try:
            self.loss = SemSegLoss(self, self.model, self.dataset, self.device)
            self.metric_train, self.metric_val = SemSegMetric(), SemSegMetric()
            self.local_confusion = {}
            with distributed.rank_zero_first(self.ranks):
                train_loader, train_sampler = self._loader(
                    'train', cfg.batch_size, 'steps_per_epoch_train')
                valid_loader, valid_sampler = None, None
                if len(self.dataset.get_split('validation')):
                    valid_loader, valid_sampler = self._loader(
                        'validation', cfg.val_batch_size,
                        'steps_per_epoch_valid')
                else:
                    log.info("The dataset's validation split holds no "
                             "cloud: training without validation (no "
                             "validation metrics, no best %s)", BEST_METRIC)
            self._samplers = {'train': train_sampler, 'valid': valid_sampler}
            first_epoch, skip = self._resume()
            self.train_model = self._wrap_model()
            self._spheres_checked = False
            # {'train' or 'valid': (epoch, its iterator)} started ahead.
            self._started_ahead = {}
            with self.stop.installed(), self.watchdog:
                self._train_epochs(first_epoch, skip, writer, train_loader,
                                   train_sampler, valid_loader, valid_sampler)
            writer.close()
            if self.options.test_after_train and not self.stop.requested:
                if self.ranks.primary:
                    self.run_test()
                if self.distributed:
                    # The other ranks keep the process group until rank 0
                    # has tested.
                    distributed.wait_for_all()
        finally:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()
            if self._owns_process_group:
                distributed.shutdown()
                self._owns_process_group = False

    def _train_epochs(self, first_epoch, skip, writer, train_loader,
                      train_sampler, valid_loader, valid_sampler):
        cfg = self.cfg
        if first_epoch > cfg.max_epoch:
            log.info("Training already finished: the checkpoint is of epoch "
                     "%d, pipeline.max_epoch is %d", first_epoch - 1,
                     cfg.max_epoch)
            return
        log.info("Started training")
        for epoch in range(first_epoch, cfg.max_epoch + 1):
            log.info(f'=== EPOCH {epoch:d}/{cfg.max_epoch:d} ===')
            self.metric_train.reset()
            self.metric_val.reset()
            train_terms, done = self._run_epoch(
                train_loader, train_sampler, self.loss, True, epoch,
                skip=skip if epoch == first_epoch else 0,
                before_last_step=functools.partial(
                    self._start_ahead, valid_loader, valid_sampler, False,
                    epoch))
            if done < len(train_loader):
                self.save_ckpt(epoch, steps_done=done)
                log.info("Stopped at batch %d of %d of epoch %d", done,
                         len(train_loader), epoch)
                return
            self.scheduler.step()
            if epoch < cfg.max_epoch:
                # Its first batches are built during the validation.
                self._start_ahead(train_loader, train_sampler, True, epoch + 1)
            if self.distributed:
                # Every rank validates (and rank 0 saves) rank 0's batch-norm
                # running statistics.
                distributed.broadcast_buffers(self.model)
            valid_terms, validated = self._validate(valid_loader,
                                                    valid_sampler, epoch)
            if valid_loader is not None and validated < len(valid_loader):
                # Stopped during validation: the epoch's training is done and
                # saved; its partial metrics are neither logged nor ranked.
                self.save_ckpt(epoch)
                log.info("Stopped during the validation of epoch %d", epoch)
                return
            self._update_best(epoch)
            if self.ranks.primary:
                self.save_logs(writer, epoch)
                self.log_loss_terms(writer, epoch, train_terms, valid_terms)
                self._log_confusion(epoch)
            stopping = self._stop_requested()
            if (epoch % cfg.save_ckpt_freq == 0 or epoch == cfg.max_epoch
                    or stopping):
                self.save_ckpt(epoch)
            if stopping:
                log.info("Stopped after epoch %d", epoch)
                return

    def _validate(self, loader, sampler, epoch):
        """The validation epoch: (terms, batches done); none without a
        validation split."""
        if loader is None:
            self.valid_losses = []
            return {}, 0
        return self._run_epoch(loader, sampler, self.loss, False, epoch)

    def save_logs(self, writer, epoch):
        """Open3D-ML's epoch log and TensorBoard scalars; training only when
        there is no validation split (the stock one reads validation
        metrics that do not exist then)."""
        if self.valid_losses:
            return super().save_logs(writer, epoch)
        accuracy, iou = self.metric_train.acc()[-1], self.metric_train.iou()[-1]
        for key, value in (('Training loss', np.mean(self.losses)),
                           ('Training accuracy/ Overall', accuracy),
                           ('Training IoU/ Overall', iou)):
            writer.add_scalar(key, value, epoch)
        log.info("Loss train: %.3f  mean acc train: %.3f  mean IoU train: "
                 "%.3f (no validation split)", np.mean(self.losses), accuracy,
                 iou)

    def _tensorboard_dir(self):
        """TensorBoard folder; a relative train_sum_dir lives in main_log_dir."""
        root = self.cfg.train_sum_dir
        if not isabs(root):
            root = join(self.cfg.main_log_dir, root)
        name = (f"{type(self.model).__name__}_{self.dataset.name}_torch")
        runid = get_runid(join(root, name))
        self.tensorboard_dir = join(root, f"{runid}_{name}")
        return self.tensorboard_dir

    @staticmethod
    def log_loss_terms(writer, epoch, train_terms, valid_terms):
        """Each loss term: one log line and one TensorBoard scalar a stage."""
        for stage, terms in (('Training', train_terms),
                             ('Validation', valid_terms)):
            for key, value in terms.items():
                writer.add_scalar(f"{stage} loss/{key}", value, epoch)
            if terms:
                log.info("%s loss terms: %s", stage, "  ".join(
                    f"{k} {v:.4f}" for k, v in terms.items()))

    # -- checkpoints --------------------------------------------------------
    def checkpoint_dir(self):
        return Path(self.cfg.logs_dir) / 'checkpoint'

    def save_ckpt(self, epoch, steps_done=None):
        """Checkpoint of `epoch` (every rank calls it: the random states of
        all ranks are gathered; rank 0 writes).

        steps_done: batches of `epoch` done, for a checkpoint written by a
        stop in the middle of the epoch.
        """
        states = {**checkpoints.random_state(self.device),
                  'samplers': self._sampler_states(steps_done is not None)}
        if isinstance(getattr(self.model, 'rng', None), np.random.Generator):
            states['model_rng'] = checkpoints.generator_state(self.model.rng)
        states = (distributed.gather_to_primary(states) if self.distributed
                  else [states])
        if not self.ranks.primary:
            return
        content = dict(
            format=checkpoints.CHECKPOINT_FORMAT, epoch=epoch,
            model_state_dict=self.model.state_dict(),
            optimizer_state_dict=self.optimizer.state_dict(),
            scheduler_state_dict=self.scheduler.state_dict(),
            random_states=states, best=self.best,
            world_size=self.ranks.world_size,
            config=checkpoints.run_config({
                'dataset': self.dataset.cfg._cfg_dict,
                'model': self.model.cfg._cfg_dict,
                'pipeline': self.cfg._cfg_dict}),
            input_settings=checkpoints.plain(self.input_settings()))
        if steps_done is not None:
            content['steps_done'] = steps_done
        scaler = self.precision.state_dict()
        if scaler is not None:
            content['scaler_state_dict'] = scaler
        folder = self.checkpoint_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / checkpoints.checkpoint_name(epoch)
        checkpoints.write_atomic(content, path)
        removed = checkpoints.prune(folder, self.options.keep_checkpoints)
        log.info("Epoch %3d: checkpoint saved to %s%s", epoch, path,
                 f" (removed {', '.join(p.name for p in removed)})"
                 if removed else '')

    def input_settings(self):
        """What shapes the model's input beyond its own config: the dataset
        class, labels, ignored labels and class names, and the dataset's own
        resolved settings where it has some (`input_settings()`)."""
        model_cfg = self.model.cfg
        settings = {
            'dataset_class': type(self.dataset).__name__,
            'lbl_values': list(model_cfg.get('lbl_values') or []),
            'ignored_label_inds': list(model_cfg.get('ignored_label_inds')
                                       or []),
            'label_to_names': dict(getattr(self.dataset, 'label_to_names',
                                           None) or {})}
        own = getattr(self.dataset, 'input_settings', None)
        if callable(own):
            settings['dataset'] = own()
        return settings

    def _sampler_states(self, mid_epoch):
        """{split: coverage state} of this rank's samplers; the training one
        as its latest epoch began: in the middle of an epoch the resume
        replays the epoch's draws up to where it stopped, and a next epoch
        started ahead (`_start_ahead`) has drawn its first spheres already."""
        states = {}
        ahead = 'train' in getattr(self, '_started_ahead', {})
        for split, sampler in self._samplers.items():
            if isinstance(sampler, SharedSpatiallyRegularSampler):
                states[split] = (self._epoch_start_sampler
                                 if (mid_epoch or ahead) and split == 'train'
                                 else sampler.state_dict())
        return states

    def read_checkpoint(self, ckpt_path=None, is_resume=True):
        """(path, checkpoint) to start from, or (None, None).

        An explicit ckpt_path must load. Otherwise the newest readable
        checkpoint of this run's folder, unless is_resume is false (Open3D-ML's
        `model.is_resume`)."""
        if ckpt_path is not None:
            if not Path(ckpt_path).exists():
                raise FileNotFoundError(f"checkpoint {ckpt_path} (model."
                                        f"ckpt_path) not found")
            return Path(ckpt_path), checkpoints.load(ckpt_path)
        if not is_resume:
            return None, None
        folder = self.checkpoint_dir()
        if self.ranks.primary and folder.is_dir():
            checkpoints.remove_stale_temporaries(folder)
        return checkpoints.load_latest_readable(folder)

    def load_ckpt(self, ckpt_path=None, is_resume=True):
        """Open3D-ML's load_ckpt (model, and optimizer and scheduler when the
        pipeline has them), skipping unreadable checkpoints. Returns the
        checkpoint dict or None."""
        path, ckpt = self.read_checkpoint(ckpt_path, is_resume)
        if ckpt is None:
            log.info('Initializing from scratch.')
            return None
        log.info('Loading checkpoint %s', path)
        self._load_states(ckpt)
        return ckpt

    def _load_states(self, ckpt):
        self.model.load_state_dict(ckpt['model_state_dict'])
        if 'optimizer_state_dict' in ckpt and hasattr(self, 'optimizer'):
            self.optimizer.load_state_dict(ckpt['optimizer_state_dict'])
        if 'scheduler_state_dict' in ckpt and hasattr(self, 'scheduler'):
            self.scheduler.load_state_dict(ckpt['scheduler_state_dict'])

    def _resume(self):
        """Load the checkpoint to continue from; (first epoch, batches of it
        already done). Rank 0 reads it and sends it to the other ranks."""
        path, ckpt = None, None
        if self.ranks.primary:
            path, ckpt = self.read_checkpoint(
                self.model.cfg.ckpt_path,
                self.model.cfg.get('is_resume', True))
        states = ckpt.pop('random_states', None) if ckpt is not None else None
        if states is not None and len(states) != self.ranks.world_size:
            log.warning("%s was written by %d rank(s), this run has %d: the "
                        "random generators are seeded afresh and the samplers' "
                        "coverage starts anew", path,
                        len(states), self.ranks.world_size)
            states = None
        if self.distributed:
            # Everything but the per-rank states (each rank's coverage of
            # every point) goes to every rank; each rank gets its own state.
            path, ckpt = distributed.broadcast_object((path, ckpt))
            has_states = distributed.broadcast_object(states is not None)
            own = (distributed.scatter_from_primary(states) if has_states
                   else None)
        else:
            own = states[0] if states is not None else None
        if ckpt is None:
            log.info('Initializing from scratch.')
            return 0, 0
        checkpoints.check_resumable(ckpt, path)
        self._load_states(ckpt)
        self.precision.load_state_dict(ckpt.get('scaler_state_dict'))
        self.best = ckpt.get('best')
        if own is not None:
            checkpoints.set_random_state(own, self.device)
            if 'model_rng' in own:
                checkpoints.set_generator_state(self.model.rng,
                                                own['model_rng'])
            for split, state in own.get('samplers', {}).items():
                self._samplers[split].load_state_dict(state)
        epoch, steps_done = int(ckpt.get('epoch', -1)), ckpt.get('steps_done')
        if steps_done is None:
            first, skip = epoch + 1, 0
            log.info('Loading checkpoint %s: epoch %d done; resuming at '
                     'epoch %d', path, epoch, first)
        else:
            first, skip = epoch, int(steps_done)
            log.info('Loading checkpoint %s: %d batch(es) of epoch %d done; '
                     'resuming there', path, skip, epoch)
        return first, skip

    # -- testing ----------------------------------------------------------
    def run_test(self):
        """The test split; every cloud's prediction is saved and the run
        ends with results.json/.md/.csv in the log folder. KPConv models go
        through the prediction engine (inference/test_split.py: planned
        spheres, pipeline.test_votes); the other backbones through
        Open3D-ML's own test loop.

        Under torchrun only rank 0 tests."""
        if not self.ranks.primary:
            log.info("Rank %d: testing is done by rank 0", self.ranks.rank)
            return
        from ..inference.test_split import engine_tests, run_test_split
        if engine_tests(self.model):
            self.test_results = run_test_split(self)
            return
        self._test_recorder = TestRecorder(self.dataset, self.model.cfg,
                                           self.cfg.logs_dir)
        try:
            super().run_test()
        except TypeError:
            # The stock loop ends by logging metrics that do not exist when no
            # test cloud has labels (ScanNet and Semantic3D test sets): after
            # the predictions are saved it raises TypeError; absorbed here
            # only in that case.
            if self.metric_test.confusion_matrix is not None:
                raise
        self.test_results = self._test_recorder.write()

    def update_tests(self, sampler, inputs, results):
        """Stock bookkeeping; a cloud the stock loop just finished goes to
        the recorder (which ignores the repeats the stock loop produces)."""
        super().update_tests(sampler, inputs, results)
        if self.complete_infer and getattr(self, '_test_recorder', None):
            self._test_recorder.add(self.dataset_split, self.curr_cloud_id,
                                    self.ori_test_labels[-1])


PIPELINE._register_module(NCMSemanticSegmentation, 'torch')
