"""NCMSemanticSegmentation: Open3D-ML's semantic-segmentation pipeline, plus
what its own cannot do for a KPFCNN subclass.

- ConcatBatcher and the 3D summary dispatch on the model *name* ("KPFCNN");
  here they dispatch on the class, so NCMKPFCNN (or any KPFCNN subclass) works;
  the batcher also carries scene-level NCM targets (scene_target.py).
- The training loop logs every loss term (cross entropy, regularizer, NCM)
  to the log file and TensorBoard.
- It refuses to train on degenerate spheres (the stock random sampler with
  KPFCNN silently yields 3-point spheres).
- DataLoader workers work: forked workers, CPU collation, per-worker seeds
  and a sampler whose state is shared (see samplers.py).
- Testing saves every cloud's prediction and ends with results.json/.md/.csv
  (see evaluation.py).
"""
import contextlib
import logging
import math
import random
from collections import defaultdict
from datetime import datetime
from os.path import isabs, join
from pathlib import Path

import numpy as np
import torch
from open3d._ml3d.torch.dataloaders import get_sampler
from open3d._ml3d.torch.models.kpconv import KPFCNN
from open3d._ml3d.torch.modules.losses import SemSegLoss
from open3d._ml3d.torch.modules.metrics import SemSegMetric
from open3d._ml3d.torch.pipelines import SemanticSegmentation
from open3d._ml3d.utils import PIPELINE, get_runid
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .evaluation import TestRecorder
from .samplers import (WORKER_START_METHOD, CloudAwareDataloader,
                       SharedSpatiallyRegularSampler, seed_worker)
from .scene_target import NCMConcatBatcher

log = logging.getLogger(__name__)

# A training sphere must hold at least this fraction of the points its radius
# implies (a disc of radius in_radius sampled every first_subsampling_dl).
MIN_SPHERE_FRACTION = 0.05


class DegenerateSpheresError(RuntimeError):
    """Training spheres hold far fewer points than their radius implies."""


def expected_sphere_points(model_cfg):
    """Points a sphere should hold: one flat surface through its centre,
    grid-subsampled, capped by the model's point limits."""
    disc = math.pi * (model_cfg.in_radius / model_cfg.first_subsampling_dl)**2
    return min(disc, model_cfg.max_in_points, model_cfg.batch_limit)


def check_spheres(lengths, model_cfg, sampler_name):
    """Raise DegenerateSpheresError when the mean sphere is far too small."""
    expected = expected_sphere_points(model_cfg)
    mean = float(np.mean(lengths))
    if mean < MIN_SPHERE_FRACTION * expected:
        raise DegenerateSpheresError(
            f"training spheres hold {mean:.0f} points on average (sizes "
            f"{list(map(int, lengths))}), but a sphere of radius "
            f"model.in_radius={model_cfg.in_radius} at "
            f"first_subsampling_dl={model_cfg.first_subsampling_dl} should hold "
            f"about {expected:.0f}. The sampler '{sampler_name}' does not give "
            f"KPFCNN real spheres: set dataset.sampler.name to "
            f"SharedSpatiallyRegularSampler (or SemSegSpatiallyRegularSampler).")
    log.info("Training spheres: %.0f points on average (%s)", mean,
             list(map(int, lengths)))


@contextlib.contextmanager
def stock_model_name(model):
    """Let Open3D-ML code that dispatches on the model name see 'KPFCNN'."""
    name = model.cfg['name']
    if isinstance(model, KPFCNN):
        model.cfg['name'] = 'KPFCNN'
    try:
        yield
    finally:
        model.cfg['name'] = name


class NCMSemanticSegmentation(SemanticSegmentation):
    """SemanticSegmentation for NCMKPFCNN and other KPFCNN subclasses.

    Extra pipeline settings: num_workers (default 0), pin_memory (default
    True, CUDA only), grad_clip_norm via model.grad_clip_norm as stock,
    test_after_train (run the test split once training ends).
    """

    def __init__(self, model, dataset=None, name='NCMSemanticSegmentation',
                 **kwargs):
        super().__init__(model, dataset=dataset, name=name, **kwargs)

    # -- dispatch on the class, not the name ------------------------------
    def get_batcher(self, device, split='training'):
        if isinstance(self.model, KPFCNN):
            return NCMConcatBatcher(device)
        return super().get_batcher(device, split)

    def get_3d_summary(self, results, input_data, epoch, save_gt=True):
        with stock_model_name(self.model):
            return super().get_3d_summary(results, input_data, epoch, save_gt)

    # -- data -------------------------------------------------------------
    def _loader(self, split, batch_size, steps_key):
        """DataLoader over a split; workers (if any) collate on the CPU."""
        cfg, model, dataset = self.cfg, self.model, self.dataset
        num_workers = cfg.get('num_workers', 0)
        split_data = dataset.get_split(split)
        sampler = split_data.sampler
        if num_workers > 0 and not isinstance(sampler,
                                              SharedSpatiallyRegularSampler):
            raise ValueError(
                f"pipeline.num_workers={num_workers} needs "
                f"dataset.sampler.name: SharedSpatiallyRegularSampler (got "
                f"{type(sampler).__name__}, whose state workers cannot share)")
        torch_split = CloudAwareDataloader(
            dataset=split_data, preprocess=model.preprocess,
            transform=model.transform, sampler=sampler,
            use_cache=dataset.cfg.use_cache,
            steps_per_epoch=dataset.cfg.get(steps_key, None))
        batcher = self.get_batcher(
            torch.device('cpu') if num_workers > 0 else self.device)
        loader = DataLoader(
            torch_split, batch_size=batch_size, sampler=get_sampler(sampler),
            num_workers=num_workers,
            multiprocessing_context=WORKER_START_METHOD if num_workers else None,
            worker_init_fn=seed_worker if num_workers else None,
            pin_memory=cfg.get('pin_memory', True) and self.device.type == 'cuda',
            collate_fn=batcher.collate_fn)
        return loader, sampler

    # -- training ---------------------------------------------------------
    def _seed_everything(self):
        seed = int(self.rng.integers(np.iinfo(np.int32).max))
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def _run_epoch(self, loader, sampler, loss_fn, train, epoch):
        """One pass over a loader; returns {term: mean} of the loss terms."""
        model, metric = self.model, (self.metric_train
                                     if train else self.metric_val)
        model.train(train)
        model.trans_point_sampler = sampler.get_point_sampler()
        terms, totals = defaultdict(list), []
        stage = 'train' if train else 'valid'
        with torch.set_grad_enabled(train):
            for step, inputs in enumerate(
                    tqdm(loader, desc='training' if train else 'validation')):
                batch = inputs['data']
                batch.to(self.device)
                if train and not self._spheres_checked:
                    check_spheres(batch.lengths[0].cpu().numpy(), model.cfg,
                                  type(sampler).__name__)
                    self._spheres_checked = True
                if train:
                    self.optimizer.zero_grad()
                results = model(batch)
                loss, gt_labels, predict_scores = model.get_loss(
                    self.loss, results, inputs, self.device)
                if predict_scores.size()[-1] == 0:
                    continue
                if train:
                    loss.backward()
                    if model.cfg.get('grad_clip_norm', -1) > 0:
                        torch.nn.utils.clip_grad_value_(
                            model.parameters(), model.cfg.grad_clip_norm)
                    self.optimizer.step()
                metric.update(predict_scores, gt_labels)
                totals.append(loss.item())
                for key, value in getattr(model, 'loss_terms', {}).items():
                    terms[key].append(value)
                if (step == 0 and stage in
                        self.cfg.get('summary').get('record_for', [])):
                    self.summary[stage] = self.get_3d_summary(
                        results, batch, epoch)
        if train:
            self.losses = totals
        else:
            self.valid_losses = totals
        return {k: float(np.mean(v)) for k, v in terms.items()}

    def run_train(self):
        """Train (and validate every epoch) as Open3D-ML does, logging each
        loss term and refusing degenerate spheres."""
        self._seed_everything()
        cfg, model = self.cfg, self.model
        model.device = self.device
        model.to(self.device)
        timestamp = datetime.now().strftime('%Y-%m-%d_%H-%M-%S')
        log_file_path = join(cfg.logs_dir, 'log_train_' + timestamp + '.txt')
        log.info("DEVICE : %s", self.device)
        log.info("Logging in file : %s", log_file_path)
        logging.getLogger().addHandler(logging.FileHandler(log_file_path))

        self.loss = SemSegLoss(self, model, self.dataset, self.device)
        self.metric_train, self.metric_val = SemSegMetric(), SemSegMetric()
        train_loader, train_sampler = self._loader(
            'train', cfg.batch_size, 'steps_per_epoch_train')
        valid_loader, valid_sampler = self._loader(
            'validation', cfg.val_batch_size, 'steps_per_epoch_valid')

        self.optimizer, self.scheduler = model.get_optimizer(cfg)
        self.load_ckpt(model.cfg.ckpt_path,
                       is_resume=model.cfg.get('is_resume', True))

        writer = SummaryWriter(self._tensorboard_dir())
        self.save_config(writer)
        log.info("Writing summary in %s.", self.tensorboard_dir)
        self._spheres_checked = False
        log.info("Started training")
        for epoch in range(0, cfg.max_epoch + 1):
            log.info(f'=== EPOCH {epoch:d}/{cfg.max_epoch:d} ===')
            self.metric_train.reset()
            self.metric_val.reset()
            train_terms = self._run_epoch(train_loader, train_sampler,
                                          self.loss, True, epoch)
            self.scheduler.step()
            valid_terms = self._run_epoch(valid_loader, valid_sampler,
                                          self.loss, False, epoch)
            self.save_logs(writer, epoch)
            self.log_loss_terms(writer, epoch, train_terms, valid_terms)
            if epoch % cfg.save_ckpt_freq == 0 or epoch == cfg.max_epoch:
                self.save_ckpt(epoch)
        writer.close()
        if cfg.get('test_after_train', False):
            self.run_test()

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

    # -- testing ----------------------------------------------------------
    def run_test(self):
        """Stock test loop; every finished cloud's prediction is saved and
        the run ends with results.json/.md/.csv in the log folder."""
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
