"""Batches per second of the data pipeline alone (issue 19): no model step,
the training batches collated exactly as the training loop gets them.

Variants, each built once from the config (variant_config, as bench epoch
does): the plugin's training loader (`NCMSemanticSegmentation._loader`)
with 0, 1 and 2 DataLoader workers, and stock Open3D-ML's (TorchDataloader +
the stock batcher + the stock sampler, SemSegSpatiallyRegularSampler for
KPFCNN; 0 workers: its worker_init_fn overflows on numpy 2) on the same
clouds. Every repeat is one epoch of warmup + batches batches per variant
(both rounded up to whole rounds of its workers, see `whole_rounds`),
after one untimed epoch of each (workers started, first reads), the
variants interleaved (v1 v2 v3 v4, v1 v2 ...); the first `warmup` batches
of each epoch are not timed (worker start, first reads). Figures: batches
per second of wall clock and per CPU-second (the main process's and the
workers' CPU time in the same window: the rate per core, whatever else
the machine runs), the median over repeats, the spread min-max, and the
ratio to stock from the medians of the same run (and the median of each
repeat's ratio).

Then one more epoch of the plugin at 0 workers and of stock, each stage of a
batch timed by wrappers set here around the functions the pipeline calls
(the library code is unchanged; the wrappers cost a few microseconds a
call): the sphere choice and its radius query in the main process, the read
of the cloud (Open3D-ML's Cache, or the preprocess without a cache), the
crop and its radius query, normalisation, augmentation, grid subsampling,
neighbours, pooling and upsampling lists per layer, the plugin's sorting,
nearest-first upsampling and NCM lists, and the rest of the collate. Mean
milliseconds a batch. Pinning the batch (pin_memory) is not measured: it
needs a CUDA build of torch.
"""
import json
import os
import pickle
import statistics
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch

from ...config import load_config, resolve_config
from ...training.items import ItemRequests
from ...training.samplers import SharedSpatiallyRegularSampler
from ..runner import build
from .epoch import variant_config
from .step import demo_dataset

# (name, DataLoader workers of the plugin, or None for stock Open3D-ML)
VARIANTS = (('plugin, 0 workers', 0), ('plugin, 1 worker', 1),
            ('plugin, 2 workers', 2), ('stock, 0 workers', None))
STOCK = 'stock, 0 workers'


# -- data and loaders ----------------------------------------------------
def bench_dataset(cfg, dataset_path=None, seed=0):
    """The folder a config's bench reads: `dataset_path`, else the config's
    own when it exists (the LiDAR config's tests/data/ign_lidarhd, from the
    working directory or the repository), else generated data (S3DIS,
    ScanNet, Semantic3D or LiDAR tiles) in a temporary folder."""
    if dataset_path is not None:
        return Path(dataset_path)
    own = cfg['dataset'].get('dataset_path')
    if own:
        for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
            if (base / own).is_dir():
                return base / own
    name = cfg['dataset']['name']
    folder = Path(tempfile.mkdtemp(prefix='ncm_bench_'))
    if name == 'LASDataset':
        from ...datasets.lidar.synthetic import write_demo_lidar
        write_demo_lidar(folder / 'tiles', seed=seed)
        return folder / 'tiles'
    if name in ('Semantic3D', 'RobustSemantic3D'):
        from ...datasets.semantic3d.convert import convert_semantic3d
        from ...datasets.semantic3d.synthetic import write_demo_semantic3d
        write_demo_semantic3d(folder / 'raw', seed=seed)
        convert_semantic3d(folder / 'raw', folder / 'grid',
                           cfg['model'].get('first_subsampling_dl', 0.06))
        return folder / 'grid'
    return demo_dataset(name, seed)


def bench_config(config, dataset_path, workers, spheres, cache_dir):
    """The merged config of one variant: `spheres` training spheres an
    epoch, the clouds preprocessed into `cache_dir` (shared by the
    variants); workers None is stock Open3D-ML's model, sampler and
    pipeline."""
    cfg = variant_config(config, dataset_path, workers, 1,
                         tempfile.mkdtemp(prefix='ncm_data_'))
    cfg['dataset'].update(cache_dir=str(cache_dir),
                          steps_per_epoch_train=spheres)
    if workers is None:
        from open3d._ml3d.utils import get_module
        original = load_config(resolve_config(config))
        model = get_module('model', original['model']['name'], 'torch')
        stock = model.stock_class() if hasattr(model, 'stock_class') else model
        cfg['model']['name'] = stock.__name__
        sampler = original['dataset'].get('sampler')
        if sampler is None:
            cfg['dataset'].pop('sampler', None)
        elif sampler['name'] != 'SharedSpatiallyRegularSampler':
            cfg['dataset']['sampler'] = sampler
    return cfg


class TrainingLoader:
    """A variant's training DataLoader and how an epoch of it starts."""

    def __init__(self, cfg, seed):
        self.stock = cfg['pipeline']['name'] == 'SemanticSegmentation'
        dataset, self.model, pipeline = build(cfg, seed)
        batch_size = cfg['pipeline']['batch_size']
        if self.stock:
            self.loader, self.sampler = stock_loader(dataset, self.model,
                                                     pipeline, batch_size)
        else:
            pipeline._seed_everything()  # as run_train, before its loaders
            self.loader, self.sampler = pipeline._loader(
                'train', batch_size, 'steps_per_epoch_train')

    def start_epoch(self, epoch):
        """Set the samplers up as the training loops do at an epoch's start
        (the plugin's `_run_epoch`, Open3D-ML's `run_train`)."""
        if isinstance(self.sampler, SharedSpatiallyRegularSampler):
            self.sampler.start_epoch(epoch)
            self.loader.sampler.skip(0)
        elif isinstance(self.loader.sampler, ItemRequests):
            self.loader.sampler.start_epoch(epoch)
            self.loader.sampler.skip(0)
        else:
            self.model.trans_point_sampler = self.sampler.get_point_sampler()


def stock_loader(dataset, model, pipeline, batch_size):
    """Open3D-ML's training loader as its `run_train` builds it, at 0
    workers and without pinning."""
    from open3d._ml3d.torch.dataloaders import TorchDataloader, get_sampler
    split = dataset.get_split('train')
    torch_split = TorchDataloader(
        dataset=split, preprocess=model.preprocess, transform=model.transform,
        sampler=split.sampler, use_cache=dataset.cfg.use_cache,
        steps_per_epoch=dataset.cfg.get('steps_per_epoch_train', None))
    loader = torch.utils.data.DataLoader(
        torch_split, batch_size=batch_size, sampler=get_sampler(split.sampler),
        num_workers=0,
        collate_fn=pipeline.get_batcher(torch.device('cpu')).collate_fn)
    return loader, split.sampler


def batch_points(data):
    """Input points of a collated batch (None for a layout not known here)."""
    if hasattr(data, 'lengths'):  # KPConv
        return int(sum(int(n) for n in data.lengths[0]))
    point = data.get('point') if isinstance(data, dict) else \
        getattr(data, 'point', None)
    if isinstance(data, dict) and 'coords' in data:  # RandLA-Net [B, N, 3]
        point = data['coords'][0]
    if not isinstance(point, torch.Tensor):
        return None
    return int(point.numel() // 3)


def cpu_seconds(pids):
    """User + system CPU seconds used so far by this process (all its
    threads) and by the processes `pids` (the DataLoader's workers)."""
    total = time.process_time()
    tick = os.sysconf('SC_CLK_TCK')
    for pid in pids:
        with open(f'/proc/{pid}/stat') as stat:
            fields = stat.read().rsplit(')', 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def worker_pids(iterator):
    return [worker.pid for worker in getattr(iterator, '_workers', ())]


def timed_epoch(variant, epoch, warmup):
    """One epoch: {'seconds', 'cpu_seconds' (of the main process and the
    workers) from the arrival of batch `warmup` to that of the last, the
    batches timed, the points of each, the batches in all}."""
    variant.start_epoch(epoch)
    iterator = iter(variant.loader)
    pids = worker_pids(iterator)
    points, count = [], 0
    start, cpu = time.perf_counter(), cpu_seconds(pids)
    for out in iterator:
        count += 1
        if count == warmup:
            start, cpu = time.perf_counter(), cpu_seconds(pids)
        elif count > warmup:
            points.append(batch_points(out['data']))
    return {'seconds': time.perf_counter() - start,
            'cpu_seconds': cpu_seconds(pids) - cpu,
            'batches_timed': count - min(warmup, count), 'points': points,
            'batches': count, 'worker_affinity': [
                sorted(os.sched_getaffinity(pid)) for pid in pids]}


def spread(values):
    return {'median': statistics.median(values), 'min': min(values),
            'max': max(values)}


def whole_rounds(count, workers):
    """`count` rounded up to a multiple of `workers` (at least 1).

    W workers on one core build W batches side by side, which arrive
    together: a window that starts or ends inside such a round times a
    batch built before it (with 1 warm-up and 1 timed batch, 2 workers
    would show the second batch arriving at once)."""
    workers = max(int(workers or 0), 1)
    return -(-int(count) // workers) * workers


def epoch_plan(args, workers):
    """(warm-up batches, timed batches) of a variant's epoch: --warmup and
    --batches in whole rounds of its workers."""
    return whole_rounds(args.warmup, workers), whole_rounds(args.batches,
                                                            workers)


def measure_rates(config, dataset_path, cache_dir, args):
    """{variant: figures} of --repeats interleaved epochs."""
    batch_size = load_config(resolve_config(config))['pipeline']['batch_size']
    plans = {name: epoch_plan(args, workers) for name, workers in VARIANTS}
    variants = {name: TrainingLoader(bench_config(
        config, dataset_path, workers, sum(plans[name]) * batch_size,
        cache_dir), args.seed) for name, workers in VARIANTS}
    for variant in variants.values():
        # Untimed: the workers start and the first reads are made, so that
        # every timed epoch starts with its workers idle and side by side.
        timed_epoch(variant, 0, 0)
    runs = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, variant in variants.items():
            run = timed_epoch(variant, repeat + 1, plans[name][0])
            run['batches_per_s'] = run['batches_timed'] / run['seconds']
            run['batches_per_cpu_s'] = run['batches_timed'] / \
                run['cpu_seconds']
            runs[name].append(run)
            print(f"repeat {repeat + 1}/{args.repeats}, {name}: "
                  f"{run['batches_per_s']:.2f} batches/s, "
                  f"{run['batches_per_cpu_s']:.2f} per CPU-second",
                  flush=True)
    rates = {}
    for name, repeats in runs.items():
        known = [p for r in repeats for p in r['points'] if p is not None]
        rates[name] = {
            **{key: spread([r[key] for r in repeats])
               for key in ('batches_per_s', 'batches_per_cpu_s')},
            'per_repeat': [r['batches_per_s'] for r in repeats],
            'per_repeat_cpu': [r['batches_per_cpu_s'] for r in repeats],
            'batches_timed': [r['batches_timed'] for r in repeats],
            'batches': [r['batches'] for r in repeats],
            'worker_affinity': repeats[-1]['worker_affinity'],
            'points_per_batch': statistics.mean(known) if known else None}
    for key, repeats in (('batches_per_s', 'per_repeat'),
                         ('batches_per_cpu_s', 'per_repeat_cpu')):
        stock = rates[STOCK]
        for row in rates.values():
            row[key]['vs_stock'] = row[key]['median'] / stock[key]['median']
            # Less exposed to the machine's drift: each repeat's variants
            # ran within a minute of each other.
            row[key]['paired_vs_stock'] = statistics.median(
                a / b for a, b in zip(row[repeats], stock[repeats]))
    return rates


# -- stage profile -------------------------------------------------------
class Stages:
    """Seconds of each stage within the batch being fetched (`active`),
    one dict per batch."""

    def __init__(self):
        self.batches, self.current, self.active = [], {}, False
        self.layer = 0  # grid subsamplings done in the batch being collated
        self.counts, self.cache_bytes, self.clouds = {}, [], set()

    def add(self, stage, seconds):
        if self.active:
            self.current[stage] = self.current.get(stage, 0.0) + seconds

    def count(self, what):
        if self.active:
            self.counts[what] = self.counts.get(what, 0) + 1

    def timed(self, stage, function):
        """`function` whose calls add to `stage` (a name, or a callable of
        the call's arguments that returns one)."""
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                name = stage(*args, **kwargs) if callable(stage) else stage
                self.add(name, time.perf_counter() - start)
        wrapper.__wrapped__ = function
        return wrapper


class TimedTree:
    """A search tree whose query_radius adds to a stage."""

    def __init__(self, tree, stages, stage):
        self.tree, self.stages, self.stage = tree, stages, stage

    def query_radius(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.tree.query_radius(*args, **kwargs)
        finally:
            self.stages.add(self.stage, time.perf_counter() - start)

    def __getattr__(self, name):
        return getattr(self.tree, name)


@contextmanager
def patched(owner, name, value):
    """owner.name = value inside the block (a class's own attribute, or
    an inherited one, given back as it was)."""
    missing = object()
    original = owner.__dict__.get(name, missing) if isinstance(owner, type) \
        else getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if original is missing:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


def timed_crop(stages, sampler):
    """A point sampler (KPFCNN's trans_point_sampler) timed as 'crop', its
    search tree's radius queries as 'crop query'."""
    def with_timed_tree(*args, **kwargs):
        if kwargs.get('search_tree') is not None:
            kwargs['search_tree'] = TimedTree(kwargs['search_tree'], stages,
                                              'crop query')
        return sampler(*args, **kwargs)
    return stages.timed('crop', with_timed_tree)


def stage_wrappers(stages, model_class):
    """[(owner, attribute, replacement)] of the functions a batch goes
    through, for `model_class` (the config's model) and its stock class.
    A function the code no longer has is left out (its stage is not
    shown), so that the profile keeps working while the pipeline changes."""
    from open3d._ml3d.datasets.samplers import SemSegRandomSampler
    from open3d._ml3d.torch.dataloaders import TorchDataloader
    from open3d._ml3d.torch.dataloaders import concat_batcher
    from open3d._ml3d.torch.models import kpconv
    from open3d._ml3d.utils import dataset_helper

    from ...training import batcher, items, radius_search, samplers
    stock = model_class.stock_class() if hasattr(model_class, 'stock_class') \
        else model_class
    timed = stages.timed

    def choice_cloud(cloud):
        def with_timed_tree(self, index):
            points, tree = cloud(self, index)
            return points, TimedTree(tree, stages, 'choice query')
        return with_timed_tree

    def cache_read(call):
        def measured(self, unique_id, *data):
            path = os.path.join(self.cache_dir, f'{unique_id}.npy')
            if stages.active and os.path.exists(path):
                stages.cache_bytes.append(os.path.getsize(path))
            return call(self, unique_id, *data)
        return timed('cache', measured)

    def counted_read(read):
        def counted(self, path):
            stages.count('cache reads')
            return read(self, path)
        return counted

    def cloud_transform(transform):
        def noted(self, data, attr, *args, **kwargs):
            if stages.active:
                stages.clouds.add((attr.get('name'), data['point'].shape,
                                   data['point'].dtype.str))
            return transform(self, data, attr, *args, **kwargs)
        return timed('transform', noted)

    def random_sampler(get_point_sampler):
        return staticmethod(lambda: timed_crop(stages, get_point_sampler()))

    def neighbours(queries, supports, *args):
        if queries is supports:
            return f'neighbours, layer {stages.layer}'
        kind = 'pooling' if len(queries) < len(supports) else 'upsampling'
        return f'{kind} lists, layer {stages.layer - 1}'

    def subsampling(*args, **kwargs):
        stages.layer += 1
        return f'grid subsampling, layer {stages.layer - 1}'

    def new_batch(init):
        def counting_layers(self, *args, **kwargs):
            stages.layer = 0
            return init(self, *args, **kwargs)
        return counting_layers

    def stage(name):
        return lambda function: timed(name, function)

    candidates = [
        (SharedSpatiallyRegularSampler, 'next_request', stage('sphere choice')),
        (SharedSpatiallyRegularSampler, '_cloud', choice_cloud),
        (samplers.SphereDataset, '__getitem__', stage('request')),
        (items.SeededItemDataset, '__getitem__', stage('request')),
        (TorchDataloader, '__getitem__', stage('item')),
        (dataset_helper.Cache, '__call__', cache_read),
        (dataset_helper.Cache, '_read', counted_read),
        (stock, 'preprocess', stage('preprocess')),
        (stock, 'transform', cloud_transform),
        (SemSegRandomSampler, 'get_point_sampler', random_sampler),
        (kpconv.KPFCNN, 'augmentation_transform', stage('augmentation')),
        (kpconv, 'trans_normalize', stage('normalisation')),
        (concat_batcher.KPConvBatch, '__init__', new_batch),
        (concat_batcher, 'batch_grid_subsampling',
         lambda function: timed(subsampling, function)),
        (concat_batcher, 'batch_neighbors',
         lambda function: timed(neighbours, function)),
        (radius_search.Searches, 'batch_neighbors',
         lambda function: timed(
             lambda searches, *args: neighbours(*args), function)),
        (radius_search, 'nearest_in_rows', stage('nearest in rows')),
        (batcher, 'sort_rows', stage('sort rows')),
        (batcher, 'nearest_first', stage('nearest first')),
        (batcher, 'knn_neighbors', stage('NCM kNN'))]
    if 'ncm_collate' in vars(model_class):
        candidates.append((model_class, 'ncm_collate', stage('ncm_collate')))
    return [(owner, name, make(getattr(owner, name)))
            for owner, name, make in candidates
            if owner is not None and hasattr(owner, name)]


def profile(cfg, seed, warmup, batches):
    """Stage times of one epoch of a 0-worker variant: (Stages, extras)."""
    from open3d._ml3d.utils import get_module
    stages = Stages()
    model_class = get_module('model', cfg['model']['name'], 'torch')
    with ExitStack() as stack:
        for owner, name, value in stage_wrappers(stages, model_class):
            stack.enter_context(patched(owner, name, value))
        variant = TrainingLoader(cfg, seed)
        loader = variant.loader
        loader.collate_fn = stages.timed('collate', loader.collate_fn)
        variant.start_epoch(0)
        sampler = getattr(variant.model, 'trans_point_sampler', None)
        if variant.stock and sampler is not None and \
                not hasattr(sampler, '__wrapped__'):
            # The stock spatially regular sampler's closure, set per epoch.
            variant.model.trans_point_sampler = timed_crop(stages, sampler)
        iterator, sizes, spheres = iter(loader), [], []
        for number in range(warmup + batches):
            stages.active = number >= warmup
            stages.current = {}
            start = time.perf_counter()
            out = next(iterator)
            stages.add('batch', time.perf_counter() - start)
            stages.active = False
            if number >= warmup:
                stages.batches.append(stages.current)
                sizes.append(len(pickle.dumps(out, protocol=4)))
                spheres.append(sphere_count(out['data']))
        extras = {'pickled_batch_bytes': statistics.mean(sizes),
                  'spheres_per_batch': statistics.mean(
                      s for s in spheres if s is not None)
                  if any(s is not None for s in spheres) else None,
                  'cache_reads': stages.counts.get('cache reads', 0),
                  'cache_read_calls': len(stages.cache_bytes),
                  'cache_file_bytes': statistics.mean(stages.cache_bytes)
                  if stages.cache_bytes else None,
                  'whole_cloud_copy_s': cloud_copy_seconds(stages.clouds)}
        if hasattr(out['data'], 'val_labels'):
            extras['val_labels_bytes'] = sum(
                np.asarray(v).nbytes for v in out['data'].val_labels)
    return stages, extras


def sphere_count(data):
    return len(data.lengths[0]) if hasattr(data, 'lengths') else None


def cloud_copy_seconds(clouds, repeats=5):
    """Median seconds of one `points.copy()` of each cloud KPFCNN's
    transform was given ({(name, shape, dtype)}), averaged over the clouds:
    the transform copies the whole cloud for every sphere."""
    if not clouds:
        return None
    seconds = []
    for _, shape, dtype in clouds:
        points = np.ones(shape, dtype=dtype)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            points.copy()
            times.append(time.perf_counter() - start)
        seconds.append(statistics.median(times))
    return statistics.mean(seconds)


# Rows of the stage table: (label, stage or derived key, depth). A derived
# key is a stage less the stages listed after it ('a|b': a, or b where the
# batch has no a).
def stage_rows(layers):
    rows = [('batch (next() of the DataLoader)', 'batch', 0),
            ('sphere choice, main process (plugin)', 'sphere choice', 1),
            ('radius query (sphere choice)', 'choice query', 2),
            ('coverage update, rest', ('sphere choice', 'choice query'), 2),
            # The plugin's request: seeding, and (without Open3D-ML's item)
            # the sphere's rows cut from the memory-mapped cloud.
            ('item request set-up: seeding, crop (plugin)',
             ('request', 'item|transform'), 1),
            ('item: cloud read + transform', 'item', 1),
            ('cloud read: Open3D-ML Cache (np.load of the whole cloud)',
             'cache', 2),
            ('cloud read: preprocess of the whole cloud (no cache)',
             'preprocess', 2),
            ('transform', 'transform', 2),
            ('crop: point sampler', 'crop', 3),
            ('radius query (crop)', 'crop query', 4),
            ('rest (shuffle, gather; stock: coverage update)',
             ('crop', 'crop query'), 4),
            ('normalisation', 'normalisation', 3),
            ('augmentation', 'augmentation', 3),
            ('rest (KPFCNN: whole-cloud copy, features, random drop)',
             ('transform', 'crop', 'normalisation', 'augmentation'), 3),
            ('item, rest', ('item', 'cache', 'preprocess', 'transform'), 2),
            ('collate', 'collate', 1)]
    per_layer = []
    for layer in range(layers):
        per_layer += [(f'grid subsampling, layer {layer}',
                       f'grid subsampling, layer {layer}', 2),
                      (f'neighbours, layer {layer}',
                       f'neighbours, layer {layer}', 2),
                      (f'pooling lists, layer {layer}',
                       f'pooling lists, layer {layer}', 2),
                      (f'upsampling lists, layer {layer}',
                       f'upsampling lists, layer {layer}', 2)]
    inner = [key for _, key, _ in per_layer]
    rows += per_layer
    rows += [('upsampling lists: nearest of each row (plugin; part of '
              'their rows above)', 'nearest in rows', 2),
             ('sort rows (pipeline.deterministic)', 'sort rows', 2),
             ('nearest first (upsampling lists)', 'nearest first', 2),
             ('NCM lists (kNN)', 'NCM kNN', 2),
             ('NCM lists (ncm_collate)', 'ncm_collate', 2),
             ('collate, rest (stacking, features, tensors)',
              ('collate', *inner, 'sort rows', 'nearest first', 'NCM kNN',
               'ncm_collate'), 2),
             ('DataLoader, rest (index drawing, fetch loop)',
              ('batch', 'sphere choice', 'request|item', 'collate'), 1)]
    return rows


def stage_means(stages, rows):
    """{label: mean seconds a batch} of the rows that ran."""
    def value(batch, key):
        if isinstance(key, str):
            return batch.get(key)
        total = batch.get(key[0])
        if total is None:
            return None
        return total - sum(part(batch, k) for k in key[1:])

    def part(batch, key):
        for name in key.split('|'):
            if name in batch:
                return batch[name]
        return 0.0

    means = {}
    for label, key, _ in rows:
        values = [value(b, key) for b in stages.batches]
        if any(v is not None for v in values):
            means[label] = statistics.mean(v or 0.0 for v in values)
    return means


def model_layers(cfg):
    return int(cfg['model'].get('num_layers', 0) or 0)


# -- report --------------------------------------------------------------
def rate_table(rates):
    lines = ['| variant | batches/s (median) | spread (min-max) | vs stock '
             '(medians) | vs stock (median of the repeats\' ratios) | '
             'batches per CPU-second (median) | spread (min-max) | vs stock '
             '(medians) | vs stock (median of the repeats\' ratios) | '
             'points a batch |', '|---|---|---|---|---|---|---|---|---|---|']
    for name, row in rates.items():
        cells = []
        for key in ('batches_per_s', 'batches_per_cpu_s'):
            rate = row[key]
            cells.append(f"{rate['median']:.3f} | {rate['min']:.3f}-"
                         f"{rate['max']:.3f} | {rate['vs_stock']:.2f}x | "
                         f"{rate['paired_vs_stock']:.2f}x")
        points = row['points_per_batch']
        lines.append(f"| {name} | {' | '.join(cells)} | "
                     f"{'-' if points is None else f'{points:.0f}'} |")
    return '\n'.join(lines)


def stage_table(profiles, rows):
    names = list(profiles)
    lines = ['| stage | ' + ' | '.join(f'{n}: ms a batch | share'
                                        for n in names) + ' |',
             '|---|' + '---|---|' * len(names)]
    for label, _, depth in rows:
        cells = []
        for name in names:
            means = profiles[name]['stages_s']
            if label not in means:
                cells.append('- | -')
                continue
            total = means['batch (next() of the DataLoader)']
            cells.append(f'{1e3 * means[label]:.2f} | '
                         f'{100 * means[label] / total:.1f} %')
        if all(c == '- | -' for c in cells):
            continue
        lines.append(f"| {'&nbsp;' * 4 * depth}{label} | "
                     + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def extras_lines(profiles):
    lines = []
    for name, result in profiles.items():
        extra = result['extras']
        spheres = extra['spheres_per_batch']
        parts = [f"{spheres:.1f} spheres a batch" if spheres else None,
                 f"{extra['pickled_batch_bytes'] / 2**20:.2f} MiB a pickled "
                 f"batch (what a worker sends)"]
        if extra.get('val_labels_bytes') is not None:
            parts.append(f"of which the whole clouds' labels (val_labels) "
                         f"{extra['val_labels_bytes'] / 2**20:.2f} MiB")
        if extra['cache_read_calls']:
            parts.append(
                f"{extra['cache_reads'] / extra['cache_read_calls']:.0f} "
                f"np.load of a {extra['cache_file_bytes'] / 2**20:.2f} MiB "
                f"cache file for every item")
        if extra['whole_cloud_copy_s'] is not None and spheres:
            parts.append(f"KPFCNN.transform's copy of the whole cloud: "
                         f"{1e3 * extra['whole_cloud_copy_s']:.3f} ms a "
                         f"sphere (timed apart)")
        lines.append(f"- {name}: " + '; '.join(p for p in parts if p))
    return '\n'.join(lines)


def conditions(args):
    return {'pin_core': args.pin_core,
            'affinity': affinity(),
            'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS'),
            'torch_threads': torch.get_num_threads(),
            'open3d_threads': args.threads,
            'batches': args.batches, 'repeats': args.repeats,
            'warmup': args.warmup, 'seed': args.seed,
            'load_average': os.getloadavg()}


def pin(core):
    """Every thread of this process on CPU `core` (sched_setaffinity sets
    one thread, and torch's and Open3D's thread pools exist from their
    import on); the fork server and the DataLoader workers, started later,
    inherit it."""
    for thread in os.listdir('/proc/self/task'):
        os.sched_setaffinity(int(thread), {core})


def affinity():
    """The CPUs any thread of this process may run on."""
    cpus = set()
    for thread in os.listdir('/proc/self/task'):
        cpus |= os.sched_getaffinity(int(thread))
    return sorted(cpus)


def run(args):
    if args.pin_core is not None:
        pin(args.pin_core)
    config = args.config
    cfg = load_config(resolve_config(config))
    dataset_path = bench_dataset(cfg, args.dataset_path, args.seed)
    cache_dir = Path(tempfile.mkdtemp(prefix='ncm_data_cache_'))
    before = conditions(args)
    print(f"{config} on {dataset_path}; {args.repeats} repeat(s) of "
          f"{args.warmup} + {args.batches} batches (the first {args.warmup} "
          f"of each not timed); {before}", flush=True)
    rates = measure_rates(config, dataset_path, cache_dir, args)
    spheres = (args.warmup + args.batches) * cfg['pipeline']['batch_size']
    profiles = {}
    for name, workers in (('plugin, 0 workers', 0), (STOCK, None)):
        variant_cfg = bench_config(config, dataset_path, workers, spheres,
                                   cache_dir)
        stages, extras = profile(variant_cfg, args.seed, args.warmup,
                                 args.batches)
        profiles[name] = {'stages_s': stage_means(
            stages, stage_rows(model_layers(variant_cfg))),
            'batches_profiled': len(stages.batches), 'extras': extras}
    rows = stage_rows(model_layers(cfg))
    print(f"\n{config}: data pipeline alone, training batches of "
          f"{cfg['pipeline']['batch_size']} spheres; medians of "
          f"{args.repeats} interleaved repeats of {args.batches} timed "
          f"batches (after {args.warmup} warm-up batches)\n")
    print(rate_table(rates))
    print("\nbatches/s: wall clock; per CPU-second: the CPU time of the "
          "main process and its workers in the same window (the rate per "
          "core, whatever else the machine runs).")
    print(f"\nStages, mean over {args.batches} batches of one more epoch "
          f"at 0 workers (wrapped functions; pinning not measured on a "
          f"CPU-only torch):\n")
    print(stage_table(profiles, rows))
    print('\n' + extras_lines(profiles))
    report = {'config': config, 'dataset_path': str(dataset_path),
              'conditions': {**before, 'load_average_end': os.getloadavg()},
              'rates': rates,
              'profiles': profiles}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + '\n')
        print(f"\nwrote {args.out}")
    return report
