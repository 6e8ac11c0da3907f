"""What the NCM term costs in a real training step (any NCM backbone).

One realistic batch (a config's spheres, sampled by the real pipeline from
real or generated data), then forward + backward of the model with and
without the NCM term, interleaved so that drifts in machine load hit both.
Peak memory: CUDA's allocator statistics on a GPU; on the CPU the peak
resident size of one fresh process per variant (torch's CPU allocations are
invisible to Python's tracemalloc).
"""
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ...config import load_config, resolve_config
from ...training.batcher import move_batch
from ...training.devices import DeviceError, require_device
from ...training.samplers import SharedSpatiallyRegularSampler
from ..runner import build


def demo_dataset(name, seed=0):
    """A generated dataset for a config's dataset `name`, in a temporary
    folder kept for the life of the process: S3DIS rooms, or ScanNet scenes
    converted as preprocess_scannet.py does."""
    folder = Path(tempfile.mkdtemp(prefix='ncm_bench_'))
    if name == 'ScanNet20':
        from ...datasets.scannet.convert import convert_scannet
        from ...datasets.scannet.synthetic import write_demo_scannet
        write_demo_scannet(folder / 'raw', seed=seed)
        convert_scannet(folder / 'raw', folder / 'scannet', workers=1)
        return folder / 'scannet'
    if name not in ('S3DIS', 'RobustS3DIS'):
        raise ValueError(f"the bench generates S3DIS or ScanNet20 data; give "
                         f"--dataset_path for dataset.name {name!r}")
    from ...datasets.s3dis.synthetic import write_demo_s3dis
    write_demo_s3dis(folder / 's3dis', seed=seed)
    return folder / 's3dis'


def realistic_batch(config, dataset_path=None, device='cpu', seed=0,
                    overrides=None):
    """(model, inputs, loss_fn) for one training batch of `config`.

    Without dataset_path, synthetic data is generated (`demo_dataset`).
    """
    from open3d._ml3d.torch.modules.losses import SemSegLoss
    cfg = load_config(resolve_config(config))
    if dataset_path is None:
        dataset_path = demo_dataset(cfg['dataset']['name'], seed)
    cfg['dataset']['dataset_path'] = str(dataset_path)
    cfg['dataset']['cache_dir'] = str(Path(dataset_path) / 'cache')
    cfg['pipeline'].update(device=device, num_workers=0,
                           main_log_dir=tempfile.mkdtemp(prefix='ncm_logs_'))
    for section, values in (overrides or {}).items():
        cfg[section].update(values)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dataset, model, pipeline = build(cfg, seed)
    loader, sampler = pipeline._loader('train', cfg['pipeline']['batch_size'],
                                       'steps_per_epoch_train')
    if not isinstance(sampler, SharedSpatiallyRegularSampler):
        # What the training loop does for samplers that choose points where
        # they are loaded (RandLA-Net's transform asks it).
        model.trans_point_sampler = sampler.get_point_sampler()
    inputs = next(iter(loader))
    move_batch(inputs['data'], pipeline.device)
    model.to(pipeline.device)
    model.device = pipeline.device
    model.train()
    return model, inputs, SemSegLoss(pipeline, model, dataset, pipeline.device)


def set_ncm_weight(model, weight):
    model.ncm_loss.cfg = dataclasses.replace(model.ncm_loss.cfg, weight=weight)


def model_device(model):
    return next(model.parameters()).device


def train_step(model, inputs, loss_fn):
    """Forward + loss + backward; seconds, synchronised on CUDA."""
    device = model_device(model)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    results = model(inputs['data'])
    loss = model.get_loss(loss_fn, results, inputs, device)[0]
    loss.backward()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_times(model, inputs, loss_fn, weight, repeats, warmup=2):
    """Median step time without (weight 0) and with the NCM term."""
    times = {0.0: [], weight: []}
    for rep in range(warmup + repeats):
        order = (0.0, weight) if rep % 2 == 0 else (weight, 0.0)
        for w in order:
            set_ncm_weight(model, w)
            seconds = train_step(model, inputs, loss_fn)
            if rep >= warmup:
                times[w].append(seconds)
    return {('ncm' if w else 'baseline'): statistics.median(t)
            for w, t in times.items()}


def ncm_term_time(model, inputs, repeats):
    """Median seconds of the NCM term alone, forward + backward, on the
    batch's real logits: the overhead without the noise of a whole step."""
    batch = inputs['data']
    logits = model(batch).detach().requires_grad_(True)
    return ncm_term_time_on(model, logits, batch, repeats)


def ncm_term_time_on(model, logits, batch, repeats):
    """Median seconds of the NCM term on given logits (of a model's
    output shape), forward + backward, as get_loss computes it."""
    device = logits.device
    times = []
    for _ in range(repeats + 1):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.ncm_loss.term(*model.ncm_layout(logits, batch)).backward()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def cuda_peak_memory(model, inputs, loss_fn, weight):
    """Peak CUDA bytes of one training step."""
    set_ncm_weight(model, weight)
    torch.cuda.reset_peak_memory_stats()
    train_step(model, inputs, loss_fn)
    return torch.cuda.max_memory_allocated()


def cpu_peak_memory(args, weight):
    """Peak resident bytes of a fresh process running one step."""
    command = [sys.executable, '-m', 'ncm_plugin.tools.bench.step', '--probe-weight',
               str(weight), '--config', args.config, '--device', 'cpu']
    if args.dataset_path:
        command += ['--dataset_path', args.dataset_path]
    output = subprocess.run(command, check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output.strip().splitlines()[-1])['peak_rss_bytes']


def probe(args):
    """Child process of cpu_peak_memory: one step, then report max RSS."""
    model, inputs, loss_fn = realistic_batch(args.config, args.dataset_path,
                                             'cpu', args.seed)
    set_ncm_weight(model, args.probe_weight)
    train_step(model, inputs, loss_fn)
    print(json.dumps({'peak_rss_bytes':
                      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run(args):
    model, inputs, loss_fn = realistic_batch(args.config, args.dataset_path,
                                             args.device, args.seed)
    batch = inputs['data']
    lengths = batch.lengths[0].tolist()
    print(f"batch: {len(lengths)} spheres, {sum(lengths)} points "
          f"({lengths}), {batch.neighbors[0].shape[1]} layer-0 neighbor "
          f"slots, {model.cfg.num_classes} classes, device "
          f"{batch.features.device}")
    weight = model.ncm_loss.cfg.weight or 1.0
    times = interleaved_times(model, inputs, loss_fn, weight, args.repeats)
    overhead = times['ncm'] / times['baseline'] - 1
    print(f"step (forward+backward), median of {args.repeats}: baseline "
          f"{times['baseline'] * 1e3:.1f} ms, with NCM {times['ncm'] * 1e3:.1f}"
          f" ms -> overhead {100 * overhead:+.2f} %")
    set_ncm_weight(model, weight)
    term = ncm_term_time(model, inputs, args.repeats)
    print(f"NCM term alone (forward+backward): {term * 1e3:.1f} ms = "
          f"{100 * term / times['baseline']:.2f} % of the baseline step")
    if batch.features.device.type == 'cuda':
        peaks = {name: cuda_peak_memory(model, inputs, loss_fn, w)
                 for name, w in (('baseline', 0.0), ('ncm', weight))}
        kind = 'CUDA max_memory_allocated'
    else:
        peaks = {name: cpu_peak_memory(args, w)
                 for name, w in (('baseline', 0.0), ('ncm', weight))}
        kind = 'peak RSS of a fresh process'
    print(f"peak memory ({kind}): baseline {peaks['baseline'] / 2**20:.0f} "
          f"MiB, with NCM {peaks['ncm'] / 2**20:.0f} MiB -> "
          f"{100 * (peaks['ncm'] / peaks['baseline'] - 1):+.2f} %")
    return {'times_s': times, 'overhead': overhead, 'ncm_term_s': term,
            'peak_bytes': peaks, 'points': sum(lengths)}


PARTS = ('step', 'scaling', 'throughput', 'convert', 'epoch', 'backbones',
         'data')


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--part', choices=PARTS + ('all',), default='step',
                        help='step: overhead and peak memory of a training '
                        'step (default); scaling: NCM time vs points and '
                        'classes; throughput: test-time points/s with and '
                        'without the plugin; convert: S3DIS conversion vs '
                        'the stock one; epoch: whole training epochs with '
                        '0/1/2 workers and the stock run_train; backbones: '
                        'step overhead of every NCM backbone on its stock '
                        'settings; data: training batches per second of the '
                        'data pipeline alone (0/1/2 workers and stock) and '
                        'the time of each stage')
    parser.add_argument('--config', default='ncm_kpconv_s3dis.yml')
    parser.add_argument('--dataset_path',
                        help='raw S3DIS (default: generated synthetic rooms)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--neighbors', type=int, default=32,
                        help='scaling: neighbor slots per point')
    parser.add_argument('--batches', type=int, default=8,
                        help='throughput: test batches; data: timed batches '
                        'a repeat')
    parser.add_argument('--stock-python',
                        help='convert: a Python with open3d 0.20 and pandas<3')
    parser.add_argument('--rooms-per-area', type=int, default=4,
                        help='convert: generated rooms per area (6 areas)')
    parser.add_argument('--workers', type=int, default=os.cpu_count(),
                        help='convert: processes of the plugin conversion')
    parser.add_argument('--threads', type=int,
                        help="torch's and Open3D's CPU threads (default: "
                        "their choice); 1 gives steadier figures on a shared "
                        "machine, and with --pin-core the rate of one core")
    parser.add_argument('--epochs', type=int, default=4,
                        help='epoch: epochs a run (the first is not timed)')
    parser.add_argument('--variants', nargs='+',
                        help='epoch: the variants to run, by position (1: '
                        'plugin 0 workers, 2: 1 worker, 3: 2 workers, 4: 0 '
                        'workers NCM weight 0, 5: stock; default all)')
    parser.add_argument('--backbones', nargs='+',
                        help='backbones: the configs to measure (default: '
                        'one per backbone, its S3DIS or ScanNet config)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='data: batches of each repeat not timed')
    parser.add_argument('--pin-core', type=int,
                        help='data: run on this CPU core only '
                        '(os.sched_setaffinity); the DataLoader workers, '
                        'started later, inherit it')
    parser.add_argument('--out', help='data: write the report as JSON here')
    parser.add_argument('--probe-weight', type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        require_device(args.device)
    except DeviceError as error:
        parser.error(f"--device: {error}")
    import logging
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
        # Open3D's radius searches run on TBB's pool, all cores by default.
        import open3d
        open3d.utility.set_max_threads(args.threads)
    if args.probe_weight is not None:
        return probe(args)
    from . import backbones, convert, data, epoch, scaling, throughput
    runners = {'step': run, 'scaling': scaling.run,
               'throughput': throughput.run,
               'convert': convert.run, 'epoch': epoch.run,
               'backbones': backbones.run, 'data': data.run}
    parts = PARTS if args.part == 'all' else (args.part,)
    return {part: runners[part](args) for part in parts}


if __name__ == '__main__':
    main()
