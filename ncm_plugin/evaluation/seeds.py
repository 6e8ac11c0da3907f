"""Statistics over seeds: is a difference between two training recipes
larger than the run-to-run noise?

Every variant is trained with the same N seeds; seed s of a variant and
seed s of the baseline share their data order and initial weights, so the
differences are paired. For each variant: mean and sample standard
deviation (ddof 1) over the seeds of mIoU, overall accuracy and every class
IoU; for each NCM variant the paired difference to the baseline (mean,
standard deviation, and on how many seeds the variant scored higher).
Figures in percent, as the results files.
"""
import json
from pathlib import Path

import numpy as np

from .results import csv_text, load_results, markdown

METRICS = ('miou', 'overall_accuracy')


def run_figures(results):
    """{'mIoU': x, 'OA': y, <class>: IoU or None} of one results dict."""
    return {'mIoU': results['miou'], 'OA': results['overall_accuracy'],
            **results['per_class_iou']}


def _mean_std(values):
    """(mean, sample std) of the values that exist; std None below 2."""
    values = np.array([v for v in values if v is not None], dtype=np.float64)
    if not len(values):
        return None, None
    return (float(values.mean()),
            float(values.std(ddof=1)) if len(values) > 1 else None)


def seed_statistics(figures, baseline='baseline'):
    """figures: {variant: [figures of seed 0, seed 1, ...]} (`run_figures`),
    every variant with the same seeds in the same order.

    Returns {variant: {'mean': {column: x}, 'std': {column: x},
    'difference': {'mean', 'std', 'wins'} (not for the baseline)}}; a column
    is mIoU, OA or a class; `wins` counts the seeds where the variant is
    higher than the baseline of the same seed (per column)."""
    counts = {name: len(runs) for name, runs in figures.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"every variant needs the same seeds, got {counts}")
    columns = list(next(iter(figures.values()))[0])
    stats = {}
    for name, runs in figures.items():
        entry = {'mean': {}, 'std': {}}
        for column in columns:
            entry['mean'][column], entry['std'][column] = _mean_std(
                [run[column] for run in runs])
        if name != baseline and baseline in figures:
            entry['difference'] = {'mean': {}, 'std': {}, 'wins': {}}
            for column in columns:
                pairs = [(run[column], base[column]) for run, base in
                         zip(runs, figures[baseline])
                         if run[column] is not None and base[column] is not None]
                diff = entry['difference']
                diff['mean'][column], diff['std'][column] = _mean_std(
                    [a - b for a, b in pairs])
                diff['wins'][column] = sum(a > b for a, b in pairs)
        stats[name] = entry
    return stats


def _pm(mean, std, signed=False):
    if mean is None:
        return ''
    text = f'{mean:+.2f}' if signed else f'{mean:.2f}'
    return text if std is None else f'{text} ± {std:.2f}'


def statistics_table(stats, seeds):
    """Header and rows: mean ± std per variant, then each variant's paired
    difference to the baseline with its wins (k/N)."""
    columns = list(next(iter(stats.values()))['mean'])
    header = ['run', 'seeds', 'wins (mIoU)', *columns]
    rows = []
    for name, entry in stats.items():
        rows.append([name, str(seeds), '',
                     *(_pm(entry['mean'][c], entry['std'][c]) for c in columns)])
    for name, entry in stats.items():
        diff = entry.get('difference')
        if diff is None:
            continue
        rows.append([f'{name} - baseline', str(seeds),
                     f"{diff['wins']['mIoU']}/{seeds}",
                     *(_pm(diff['mean'][c], diff['std'][c], signed=True)
                       for c in columns)])
    return header, rows


def summarize_seeds(folders, out):
    """folders: {variant: [run folder of each seed]}; writes out.md, out.csv
    and out.json (the per-seed figures and the statistics); returns the
    Markdown table."""
    figures = {name: [run_figures(load_results(f)) for f in runs]
               for name, runs in folders.items()}
    stats = seed_statistics(figures)
    seeds = len(next(iter(figures.values())))
    header, rows = statistics_table(stats, seeds)
    text = markdown(header, rows)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.md').write_text(text)
    out.with_suffix('.csv').write_text(csv_text(header, rows))
    out.with_suffix('.json').write_text(json.dumps(
        {'per_seed': figures, 'statistics': stats}, indent=2) + '\n')
    return text
