"""Whole training epochs, data loading included: spheres per second with
0, 1 and 2 DataLoader workers, the share of the time the loop waits for the
next batch, and the stock Open3D-ML run_train on the same config (which can
only run without workers: its worker_init_fn overflows on numpy 2).

Every variant is a fresh pipeline from the same config, data and seed; each
trains --epochs epochs (training + validation, no checkpoint in between);
the figures are of the epochs after the first (worker start-up and caches
warm), and the variants run in turn --repeats times (medians).
"""
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from ...config import load_config, resolve_config
from ...training.options import PipelineOptions
from ..runner import build

# (name, num_workers or None for the stock pipeline, NCM weight or None for
# the config's).
VARIANTS = (('plugin, 0 workers', 0, None), ('plugin, 1 worker', 1, None),
            ('plugin, 2 workers', 2, None),
            ('plugin, 0 workers, NCM weight 0', 0, 0.0),
            ('stock run_train, 0 workers', None, None))
STOCK = 'stock run_train, 0 workers'


def variant_config(config, dataset_path, workers, epochs, log_dir,
                   ncm_weight=None):
    cfg = load_config(resolve_config(config))
    cfg['dataset'].pop('demo_data', None)
    cfg['dataset'].update(dataset_path=str(dataset_path),
                          cache_dir=str(Path(dataset_path) / 'cache'))
    cfg['pipeline'].update(device='cpu', max_epoch=epochs - 1,
                           save_ckpt_freq=10 ** 6, test_after_train=False,
                           main_log_dir=str(log_dir),
                           num_workers=workers or 0)
    if ncm_weight is not None:
        cfg['model']['ncm']['weight'] = ncm_weight
    if workers is None:  # Open3D-ML's own pipeline, model and sampler
        cfg['pipeline']['name'] = 'SemanticSegmentation'
        for option in dataclasses.fields(PipelineOptions):
            cfg['pipeline'].pop(option.name, None)
        cfg['pipeline']['num_workers'] = 0  # stock default 2 overflows
        cfg['model']['name'] = 'KPFCNN'
        cfg['model'].pop('ncm', None)
        cfg['dataset']['sampler'] = {'name': 'SemSegSpatiallyRegularSampler'}
    return cfg


def timed_run(cfg, seed):
    """(seconds of the epochs after the first, spheres trained in them,
    data-wait share or None)."""
    _, _, pipeline = build(cfg, seed)
    marks = []
    original = pipeline.save_logs

    def save_logs(*args, **kwargs):  # called once per epoch, after validation
        marks.append(time.perf_counter())
        return original(*args, **kwargs)

    pipeline.save_logs = save_logs
    pipeline.run_train()
    steps = cfg['dataset']['steps_per_epoch_train']
    seconds = marks[-1] - marks[0]
    spheres = steps * (len(marks) - 1)
    timings = [t for t in getattr(pipeline, 'epoch_timings', [])
               if t['epoch'] > 0]
    wait = (sum(t['data_wait_seconds'] for t in timings) /
            sum(t['seconds'] for t in timings)) if timings else None
    return seconds, spheres, wait


def chosen(names):
    """The VARIANTS whose position (1-5) is in `names`, all for None: a
    pair measured with more repeats in the same time."""
    if not names:
        return VARIANTS
    try:
        return tuple(VARIANTS[int(n) - 1] for n in names)
    except (ValueError, IndexError):
        raise SystemExit(f"--variants: positions 1-{len(VARIANTS)} of "
                         f"{[name for name, _, _ in VARIANTS]}, got {names}")


def run(args):
    config = args.config if args.config != 'ncm_kpconv_s3dis.yml' \
        else 'ncm_kpconv_demo.yml'
    dataset_path = args.dataset_path
    if dataset_path is None:
        from ...datasets.s3dis.synthetic import write_demo_s3dis
        dataset_path = Path(tempfile.mkdtemp(prefix='ncm_bench_')) / 's3dis'
        write_demo_s3dis(dataset_path, seed=args.seed)
    variants = chosen(getattr(args, 'variants', None))
    results = {name: [] for name, _, _ in variants}
    for repeat in range(args.repeats):
        for name, workers, weight in variants:
            cfg = variant_config(config, dataset_path, workers, args.epochs,
                                 tempfile.mkdtemp(prefix='ncm_epoch_'), weight)
            results[name].append(timed_run(cfg, args.seed))
            seconds, spheres, wait = results[name][-1]
            print(f"{name}: {spheres / seconds:.2f} spheres/s"
                  + (f", waiting for data {100 * wait:.0f} %"
                     if wait is not None else ''), flush=True)
    summary = {}
    for name, runs in results.items():
        rate = statistics.median(s / t for t, s, _ in runs)
        waits = [w for _, _, w in runs if w is not None]
        summary[name] = {'spheres_per_s': rate,
                         'data_wait': statistics.median(waits) if waits
                         else None}
    stock = summary.get(STOCK, {}).get('spheres_per_s', float('nan'))
    for name, row in summary.items():
        # Each repeat's variants ran within minutes of each other: the
        # median of their ratios is less exposed to the machine's drift.
        row['paired_vs_stock'] = statistics.median(
            (s / t) / (ss / st) for (t, s, _), (st, ss, _) in
            zip(results[name], results[STOCK])) if STOCK in results \
            else float('nan')
    print(f"\n{config}, {args.epochs} epochs a run ({args.epochs - 1} timed), "
          f"{args.repeats} repeat(s), medians:")
    print("| variant | spheres/s (training + validation) | vs stock | "
          "vs stock, paired | waiting for data |\n"
          "| --- | --- | --- | --- | --- |")
    for name, row in summary.items():
        wait = row['data_wait']
        print(f"| {name} | {row['spheres_per_s']:.2f} | "
              f"{row['spheres_per_s'] / stock:.2f}x | "
              f"{row['paired_vs_stock']:.2f}x | "
              f"{'-' if wait is None else f'{100 * wait:.0f} %'} |")
    return summary
