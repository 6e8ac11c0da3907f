"""--part pipeline: the training pipeline on the device, on generated data
(needs Open3D; a user's machine after scripts/install.sh --cuda).

In this process, one realistic batch per backbone config (bench/step.py's
realistic_batch): forward + backward in float32 and under pipeline.amp's
autocast and GradScaler, then the step time with and without the NCM term
(bench/step.py's interleaved_times, ncm_term_time, cuda_peak_memory). Then
training runs through scripts/run_pipeline.py's main, in child processes
(runs.py): the demo config for two epochs with 4 workers through its
validation; per backbone two deterministic runs without workers and one
with 2, whose final weights must be equal; the S3DIS KPConv deform config
with 0, 4 and 8 workers for the share of a step spent waiting for data.

Tiny mode (--device cpu): KPConv deform and RandLA-Net shrunk to ~2k
points, one step; the runs of KPConv deform alone, with 1 worker, on a
few rooms, in one child started beside the in-process checks; the wait
for data read from its determinism runs.
"""
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...training.precision import MixedPrecision
from ..bench.step import (cuda_peak_memory, interleaved_times, model_device,
                          ncm_term_time, realistic_batch, set_ncm_weight)
from .report import Result, not_run

REPO = Path(__file__).resolve().parents[3]
SEED = 0

KPCONV_SHRINK = {'model': {
    'num_layers': 2, 'architecture': [
        'simple', 'resnetb', 'resnetb_strided', 'resnetb_deformable',
        'nearest_upsample', 'unary'],
    'first_features_dim': 16, 'in_radius': 1.0, 'first_subsampling_dl': 0.08,
    'max_in_points': 1500, 'batch_limit': 20000}}
RANDLANET_SHRINK = {'model': {'num_points': 2048, 'num_layers': 2,
                              'sub_sampling_ratio': [4, 4],
                              'dim_output': [8, 16]}}
# Runs of the reproducibility check: one short epoch and its validation.
SHORT_RUN = {'dataset': {'steps_per_epoch_train': 4,
                         'steps_per_epoch_valid': 1},
             'pipeline': {'batch_size': 2, 'val_batch_size': 1,
                          'max_epoch': 0, 'deterministic': True}}


@dataclass(frozen=True)
class Backbone:
    """config: a shipped config; data: 's3dis' or 'scannet'; shrink: the
    overrides of its short runs (tests/test_backbone_*.py's); cpu: Open3D's
    CPU wheel has kernels for its ops; tiny: one of the tiny mode's;
    not_reproducible: why two of its runs are not expected to be equal."""
    config: str
    data: str = 's3dis'
    shrink: dict = field(default_factory=dict)
    cpu: bool = True
    tiny: bool = False
    not_reproducible: str = ''

    @property
    def name(self):
        return self.config.removesuffix('.yml')


BACKBONES = (
    Backbone('ncm_kpconv_s3dis.yml', shrink=KPCONV_SHRINK, tiny=True),
    Backbone('ncm_kpfcnn_s3dis.yml', shrink=KPCONV_SHRINK),
    Backbone('ncm_randlanet_s3dis.yml', shrink=RANDLANET_SHRINK, tiny=True),
    Backbone('ncm_pointtransformer_s3dis.yml', shrink={'model': {
        'blocks': [1, 1, 1, 1, 1], 'voxel_size': 0.08, 'max_voxels': 6000}},
        not_reproducible='docs/performance.md: Open3D ops not reproducible '
        'on the CPU build'),
    Backbone('ncm_pvcnn_s3dis.yml', shrink={
        'model': {'num_points': 8192}, 'dataset': {'num_points': 8192}},
        cpu=False, not_reproducible='review gpu-2026-12-01 §9: devoxelize '
        'gradient accumulates with atomics'),
    Backbone('ncm_sparseconvunet_scannet.yml', data='scannet', shrink={
        'model': {'multiplier': 4, 'voxel_size': 0.1}},
        not_reproducible='docs/performance.md: Open3D ops not reproducible '
        'on the CPU build'),
)
NO_CPU_KERNEL = ("Open3D's CPU wheel has no kernel for PVCNN's ops "
                 "(voxelize, trilinear_devoxelize)")
NOT_TINY = 'not in the tiny mode (KPConv deform and RandLA-Net only)'
NOT_TINY_RUNS = 'not in the tiny mode (KPConv deform only)'


def merged(*overrides):
    """{section: {key: value}} of several override dicts, later ones win."""
    out = {}
    for override in overrides:
        for section, values in override.items():
            out.setdefault(section, {}).update(values)
    return out


def as_arguments(overrides):
    """run_pipeline.py's --section.key value pairs (values as YAML)."""
    return [word for section, values in overrides.items()
            for key, value in values.items()
            for word in (f'--{section}.{key}', json.dumps(value))]


@dataclass
class Setting:
    """What a mode gives every check: folders, data, sizes."""
    device: str
    tiny: bool
    work: Path
    data: dict = field(default_factory=dict)

    @property
    def cuda(self):
        return self.device == 'cuda'

    def dataset(self, backbone):
        """Overrides that point a config at the generated data."""
        extra = {'test_area_idx': 3} if self.tiny and \
            backbone.data == 's3dis' else {}
        return {'dataset': extra}

    def sizes(self, backbone):
        """The batch of the in-process checks: the stock sizes on a GPU,
        shrunk in the tiny mode."""
        if not self.tiny:
            return {}
        return merged(backbone.shrink, {'pipeline': {'batch_size': 2}})


def generate_data(setting, backbones):
    """Generated S3DIS rooms (converted) and, if a backbone needs them,
    ScanNet scenes (converted), under the work folder; paths in
    setting.data."""
    from ...datasets.s3dis.convert import convert_s3dis
    from ...datasets.s3dis.synthetic import write_demo_s3dis
    root = setting.work / 'data'
    options = dict(areas=(1, 3), rooms_per_area=1) if setting.tiny else {}
    write_demo_s3dis(root / 's3dis', seed=SEED, **options)
    convert_s3dis(root / 's3dis', workers=1)
    setting.data['s3dis'] = root / 's3dis'
    if any(b.data == 'scannet' for b in backbones):
        from ...datasets.scannet.convert import convert_scannet
        from ...datasets.scannet.synthetic import write_demo_scannet
        write_demo_scannet(root / 'scannet_raw', seed=SEED)
        convert_scannet(root / 'scannet_raw', root / 'scannet', workers=1)
        setting.data['scannet'] = root / 'scannet'
    return Result(True, figures={k: str(v) for k, v in setting.data.items()})


# -- in this process ---------------------------------------------------------
def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def forward_backward(model, inputs, loss_fn, amp):
    """One forward + loss + backward as the training step does it (with
    amp: float16 autocast and GradScaler); figures of it."""
    device = model_device(model)
    precision = MixedPrecision(amp, device)
    model.zero_grad(set_to_none=True)
    synchronize(device)
    start = time.perf_counter()
    with precision.autocast():
        results = model(inputs['data'])
        loss = model.get_loss(loss_fn, results, inputs, device)[0]
    precision.scaler.scale(loss).backward()
    synchronize(device)
    seconds = time.perf_counter() - start
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    finite = all(bool(torch.isfinite(g).all()) for g in grads)
    terms = {k: float(v) for k, v in getattr(model, 'loss_terms', {}).items()}
    figures = {'ms': 1e3 * seconds, 'loss': float(loss.detach()),
               'output_dtype': str(results.dtype).replace('torch.', ''),
               'parameters_with_grad': len(grads), 'finite_grads': finite,
               **terms}
    # Under amp a first step may overflow the scaled gradients; GradScaler
    # then skips it and lowers the scale: not a failure.
    ok = bool(torch.isfinite(loss)) and (finite or amp)
    return Result(ok, figures['ms'], figures,
                  '' if finite else 'non-finite gradients')


def step_times(model, inputs, loss_fn, repeats, warmup):
    """Step with and without the NCM term, the term alone, peak memory."""
    weight = model.ncm_loss.cfg.weight or 1.0
    times = interleaved_times(model, inputs, loss_fn, weight, repeats,
                              warmup=warmup)
    set_ncm_weight(model, weight)
    term = ncm_term_time(model, inputs, repeats)
    figures = {'without_ncm_ms': 1e3 * times['baseline'],
               'with_ncm_ms': 1e3 * times['ncm'], 'term_alone_ms': 1e3 * term,
               'overhead': times['ncm'] / times['baseline'] - 1,
               'repeats': repeats}
    if model_device(model).type == 'cuda':
        for name, w in (('without_ncm', 0.0), ('with_ncm', weight)):
            figures[f'{name}_peak_MiB'] = cuda_peak_memory(
                model, inputs, loss_fn, w) / 2**20
        set_ncm_weight(model, weight)
    return Result(True, figures['overhead'], figures)


def deterministic_cost(model, inputs, loss_fn, repeats):
    """pipeline.deterministic's price on one batch: forward + backward
    (median ms) and peak memory with torch's deterministic algorithms off
    and on. On CUDA KPConv's gather backward then becomes a sort-based
    scatter over n*K*D keys per layer. (warn_only: the cost is measured,
    not whether every op has a deterministic kernel; the determinism runs
    check that.)"""
    device = model_device(model)
    figures = {}
    try:
        for label, flag in (('off', False), ('on', True)):
            torch.use_deterministic_algorithms(flag, warn_only=True)
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
            times = sorted(forward_backward(model, inputs, loss_fn,
                                            amp=False).value
                           for _ in range(repeats))
            figures[f'{label}_ms'] = times[len(times) // 2]
            if device.type == 'cuda':
                figures[f'{label}_peak_MiB'] = \
                    torch.cuda.max_memory_allocated(device) / 2**20
    finally:
        torch.use_deterministic_algorithms(False)
    figures['ratio'] = figures['on_ms'] / figures['off_ms']
    return Result(True, figures['ratio'], figures)


def batch_figures(model, inputs):
    batch = inputs['data']
    lengths = getattr(batch, 'lengths', None)
    if lengths is not None:
        return {'points': int(lengths[0].sum()), 'clouds': len(lengths[0])}
    return {}


def backbone_checks(report, setting, backbone):
    """The in-process checks of one backbone config."""
    name = backbone.name
    checks = (f'{name}: forward+backward float32',
              f'{name}: forward+backward amp',
              f'{name}: step time with/without NCM',
              f'{name}: cost of pipeline.deterministic')
    reason = (NO_CPU_KERNEL if not setting.cuda and not backbone.cpu else
              NOT_TINY if setting.tiny and not backbone.tiny else None)
    if reason:
        for check in checks:
            report.run('pipeline', check, not_run, reason)
        return
    folder = setting.work / 'batches' / name
    overrides = merged(setting.sizes(backbone), setting.dataset(backbone), {
        'dataset': {'cache_dir': str(folder / 'cache')},
        'pipeline': {'main_log_dir': str(folder / 'logs')}})
    report.progress(f"pipeline: {name}: building a batch")
    built = {}

    def build():
        built['model'], built['inputs'], built['loss_fn'] = realistic_batch(
            backbone.config, setting.data[backbone.data], setting.device,
            SEED, overrides)
        return forward_backward(built['model'], built['inputs'],
                                built['loss_fn'], amp=False)

    first = report.run('pipeline', checks[0], build)
    if not built:
        for check in checks[1:]:
            report.run('pipeline', check, not_run, 'no batch (see above)')
        return
    first.figures.update(batch_figures(built['model'], built['inputs']))
    model, inputs, loss_fn = built['model'], built['inputs'], built['loss_fn']
    if setting.cuda:
        report.run('pipeline', checks[1], forward_backward, model, inputs,
                   loss_fn, True)
    else:
        report.run('pipeline', checks[1], not_run,
                   'pipeline.amp is for CUDA (ignored on the CPU)')
    repeats, warmup = (1, 0) if setting.tiny else (5, 2)
    report.run('pipeline', checks[2], step_times, model, inputs, loss_fn,
               repeats, warmup)
    report.run('pipeline', checks[3], deterministic_cost, model, inputs,
               loss_fn, max(repeats, 1))
    built.clear()
    del model, inputs, loss_fn
    gc.collect()
    if setting.cuda:
        torch.cuda.empty_cache()


# -- training runs in child processes ----------------------------------------
def run_arguments(setting, config, folder, dataset_path, overrides):
    """run_pipeline.py's arguments of a run whose files all go to folder."""
    return ['torch', '-c', config, '--device', setting.device,
            '--dataset_path', str(dataset_path),
            '--main_log_dir', str(folder / 'logs'),
            '--dataset.cache_dir', str(folder / 'cache'),
            '--dataset.test_result_folder', str(folder / 'test'),
            '--seed', str(SEED), *as_arguments(merged(
                {'pipeline': {'test_after_train': False,
                              'step_timeout': 60 if setting.cuda else 120}},
                overrides))]


def run_spec(setting, name, config, dataset_path, overrides, weights=False):
    folder = setting.work / 'runs' / name.replace(' ', '_').replace(':', '')
    return {'name': name, 'folder': str(folder), 'weights': weights,
            'argv': run_arguments(setting, config, folder, dataset_path,
                                  overrides)}


def demo_run(setting):
    """ncm_kpconv_demo.yml, generating its own data, 2 epochs with 4
    workers (tiny: 1 epoch of 2 steps, 1 worker)."""
    overrides = {'pipeline': {'max_epoch': 1, 'num_workers': 4}}
    if setting.tiny:
        overrides = merged(KPCONV_SHRINK, {
            'model': {'first_subsampling_dl': 0.12},
            'dataset': {'steps_per_epoch_train': 2, 'steps_per_epoch_valid': 1,
                        'demo_data': {'kind': 's3dis', 'seed': 0,
                                      'areas': [1, 5], 'rooms_per_area': 1}},
            'pipeline': {'max_epoch': 0, 'num_workers': 1, 'batch_size': 2,
                         'val_batch_size': 2}})
    return run_spec(setting, 'demo', 'ncm_kpconv_demo.yml',
                    setting.work / 'runs' / 'demo_data', overrides)


def workers_of_determinism(setting):
    return 1 if setting.tiny else 2


def determinism_runs(setting, backbone):
    """Two runs without workers and one with, same config and seed."""
    overrides = merged(backbone.shrink, setting.dataset(backbone), SHORT_RUN)
    path = setting.data[backbone.data]
    workers = workers_of_determinism(setting)
    return [run_spec(setting, f'{backbone.name}: {label}', backbone.config,
                     path, merged(overrides, {'pipeline': {'num_workers': w}}),
                     weights=True)
            for label, w in (('0 workers', 0), ('0 workers again', 0),
                             (f'{workers} workers', workers))]


WAIT_WORKERS = (0, 4, 8)


def wait_runs(setting):
    """The S3DIS KPConv deform config, stock sizes, 2 epochs of 10 steps,
    with 0, 4 and 8 workers."""
    backbone = BACKBONES[0]
    overrides = merged(setting.dataset(backbone), {
        'dataset': {'steps_per_epoch_train': 10, 'steps_per_epoch_valid': 2},
        'pipeline': {'max_epoch': 1}})
    return [run_spec(setting, f'wait: {w} workers', backbone.config,
                     setting.data['s3dis'],
                     merged(overrides, {'pipeline': {'num_workers': w}}))
            for w in WAIT_WORKERS]


class Job:
    """A child process running a list of runs (runs.py)."""

    def __init__(self, setting, name, runs, threads=None):
        self.name, self.runs = name, runs
        folder = setting.work / 'jobs'
        folder.mkdir(parents=True, exist_ok=True)
        self.results_path = folder / f'{name}.results.json'
        self.log_path = folder / f'{name}.log'
        spec = folder / f'{name}.json'
        spec.write_text(json.dumps({'results': str(self.results_path),
                                    'runs': runs}, indent=1))
        env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
            [str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p])}
        if threads:
            env['OMP_NUM_THREADS'] = str(threads)
        self.log = open(self.log_path, 'w')
        self.start = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'ncm_plugin.tools.gpu_check.runs',
             str(spec)], cwd=setting.work, stdout=self.log,
            stderr=subprocess.STDOUT, env=env)

    def finish(self, timeout):
        """{run name: result}; runs a crash or the timeout cut short get
        ok False and the log's tail."""
        left = max(1.0, timeout - (time.perf_counter() - self.start))
        why = None
        try:
            code = self.process.wait(timeout=left)
            if code:
                why = f"the child process exited with {code}"
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            why = f"killed after {timeout:.0f} s"
        self.log.close()
        results = (json.loads(self.results_path.read_text())
                   if self.results_path.exists() else {})
        tail = self.log_path.read_text(errors='replace')[-1500:]
        for run in self.runs:
            if run['name'] not in results:
                results[run['name']] = {
                    'ok': False, 'timings': [], 'weights': None,
                    'seconds': None,
                    'error': f"{why or 'not run'}; log {self.log_path}: "
                             f"{tail}"}
        return results


def run_failure(result):
    return Result(False, note=str(result['error'])[-1500:])


def demo_check(result, setting):
    if not result['ok']:
        return run_failure(result)
    epochs = 1 if setting.tiny else 2
    phases = [t['phase'] for t in result['timings']]
    figures = {'seconds': result['seconds'],
               'training_epochs': phases.count('training'),
               'validation_epochs': phases.count('validation')}
    ok = figures['training_epochs'] == figures['validation_epochs'] == epochs
    return Result(ok, result['seconds'], figures,
                  '' if ok else f"expected {epochs} training and validation "
                  f"epochs")


def different_tensors(a, b):
    first, second = torch.load(a), torch.load(b)
    if first.keys() != second.keys():
        return ['(other parameter names)']
    return [k for k in first if not torch.equal(first[k], second[k])]


def determinism_check(results, backbone, setting):
    """Equal final weights: 0 workers twice, and 0 against W workers."""
    workers = workers_of_determinism(setting)
    names = [f'{backbone.name}: {label}' for label in
             ('0 workers', '0 workers again', f'{workers} workers')]
    failed = [n for n in names if not results[n]['ok']]
    if failed:
        return run_failure(results[failed[0]])
    paths = [results[n]['weights'] for n in names]
    again = different_tensors(paths[0], paths[1])
    with_workers = different_tensors(paths[0], paths[2])
    figures = {'two_runs_equal': not again,
               f'{workers}_workers_equal': not with_workers,
               'tensors_differing_two_runs': len(again),
               f'tensors_differing_{workers}_workers': len(with_workers)}
    equal = not again and not with_workers
    unequal = [label for label, diff in (('two runs', again),
                                         (f'{workers} workers', with_workers))
               if diff]
    note = (f"differ: {', '.join(unequal)} (first tensor "
            f"{(again or with_workers)[0]})" if unequal else '')
    if not equal and backbone.not_reproducible:
        return Result(None, False, figures, f"{note}; not expected to be "
                      f"equal: {backbone.not_reproducible}")
    return Result(equal, equal, figures, note)


def wait_check(results, runs_by_workers):
    """Share of the training epoch spent waiting for the next batch, per
    number of workers (the last epoch of each run: workers warm)."""
    figures = {}
    for workers, name in runs_by_workers.items():
        result = results[name]
        if not result['ok']:
            return run_failure(result)
        training = [t for t in result['timings'] if t['phase'] == 'training']
        last = training[-1]
        figures[f'{workers}_workers'] = {
            'waiting': last['data_wait_seconds'] / last['seconds'],
            'epoch_s': last['seconds'], 'steps': last['steps']}
    return Result(True, {k: v['waiting'] for k, v in figures.items()}, figures)


# -- the part ----------------------------------------------------------------
@contextlib.contextmanager
def working_directory(folder):
    """KPConv writes its kernel dispositions to ./kernels: there."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def run(report, device, tiny, out):
    """Every pipeline check; the runs' files under a temporary folder in
    `out`, removed when every check passed."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix='gpu_check_work_', dir=out)).resolve()
    report.progress(f"pipeline: generated data and runs under {work}")
    with working_directory(work):
        checks(report, Setting(device, tiny, work))
    if not report.failed():
        shutil.rmtree(work, ignore_errors=True)
    else:
        report.progress(f"pipeline: runs kept in {work}")


def checks(report, setting):
    tiny = setting.tiny
    data = report.run('pipeline', 'generated data', generate_data, setting,
                      [b for b in BACKBONES if b.tiny or not tiny])
    if not data.ok:
        return
    # The runs: of KPConv deform alone in the tiny mode.
    reproduced = [b for b in BACKBONES if (b.cpu or setting.cuda) and
                  (b is BACKBONES[0] or not tiny)]
    if tiny:
        # One child beside the in-process checks (their times mean nothing
        # here); the wait for data read from the determinism runs.
        job = Job(setting, 'runs', [demo_run(setting)] + [
            run for b in reproduced for run in determinism_runs(setting, b)],
            threads=1)
        for backbone in BACKBONES:
            backbone_checks(report, setting, backbone)
        results = job.finish(timeout=240)
        waits = {w: f'{BACKBONES[0].name}: {w} workers' for w in (0, 1)}
    else:
        # The timed runs alone, then the others side by side.
        for backbone in BACKBONES:
            backbone_checks(report, setting, backbone)
        results = Job(setting, 'wait', wait_runs(setting)).finish(timeout=120)
        waits = {w: f'wait: {w} workers' for w in WAIT_WORKERS}
        jobs = [Job(setting, 'demo', [demo_run(setting)], threads=4)] + [
            Job(setting, b.name, determinism_runs(setting, b), threads=2)
            for b in reproduced]
        for job in jobs:
            results.update(job.finish(timeout=150))
    run_checks(report, setting, results, reproduced, waits)


def run_checks(report, setting, results, reproduced, waits):
    """The checks of the training runs, from their results."""
    report.run('pipeline', 'demo config with workers, through its '
               'validation', demo_check, results['demo'], setting)
    for backbone in BACKBONES:
        name = f'{backbone.name}: two deterministic runs and 0 vs ' \
               f'{workers_of_determinism(setting)} workers, equal weights'
        if backbone in reproduced:
            report.run('pipeline', name, determinism_check, results,
                       backbone, setting)
        else:
            report.run('pipeline', name, not_run, NO_CPU_KERNEL if not (
                backbone.cpu or setting.cuda) else NOT_TINY_RUNS)
    report.run('pipeline', 'waiting for data, share of the training epoch',
               wait_check, results, waits)
