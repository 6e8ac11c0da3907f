"""The KL direction and target ablation (the paper's section 4.3).

Trains, from one config, the baseline (NCM weight 0) and the four NCM
variants forward/reverse x sample/scene, each with the same seed, the same
budget (the config plus the same overrides) and its own log folder, tests
each, and writes one comparison table through `results.compare_runs`, plus
whether the NCM KL term fell during training in each run (first and last
epoch's mean `Training loss/ncm_kl`, read from TensorBoard). With several
seeds every variant is trained with each, and the table is the statistics
over the seeds with the paired differences to the baseline (seeds.py).

Every run is `scripts/run_pipeline.py`'s command (`ncm-run`) in a subprocess, so a run is exactly
what a user would launch by hand; its output goes to `<out>/<variant>/run.log`.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..evaluation.results import compare_runs
from ..evaluation.seeds import summarize_seeds

# The command line of scripts/run_pipeline.py (ncm-run), run as a module so
# that an installed package needs no scripts/ folder.
RUN_PIPELINE = ('-m', 'ncm_plugin.tools.runner')

# (name, model.ncm overrides); weight None = the config's own weight.
VARIANTS = (
    ('baseline', {'weight': 0.0}),
    ('forward-sample', {'direction': 'forward', 'target': 'sample'}),
    ('reverse-sample', {'direction': 'reverse', 'target': 'sample'}),
    ('forward-scene', {'direction': 'forward', 'target': 'scene'}),
    ('reverse-scene', {'direction': 'reverse', 'target': 'scene'}),
)


def run_arguments(config, folder, ncm, seed, extra):
    """run_pipeline.py arguments of one variant: train, then test."""
    args = ['torch', '-c', str(config), '--seed', str(seed),
            '--main_log_dir', str(folder),
            '--dataset.test_result_folder', str(folder / 'test'),
            '--pipeline.test_after_train', 'true', *map(str, extra)]
    for key, value in ncm.items():
        args += [f'--model.ncm.{key}', str(value)]
    return args


def kl_curve(folder):
    """Per-epoch mean NCM KL of the training batches ([] for the baseline)."""
    from tensorboard.backend.event_processing.event_accumulator import \
        EventAccumulator
    values = []
    for events in sorted({p.parent for p in folder.rglob('events.out.*')}):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if 'Training loss/ncm_kl' in accumulator.Tags()['scalars']:
            values += [e.value for e in
                       accumulator.Scalars('Training loss/ncm_kl')]
    return values


def check_config_weight(config):
    """The NCM variants train with the config's weight: it must be > 0."""
    from ..config import load_config, resolve_config
    weight = load_config(resolve_config(config))['model'].get('ncm', {}).get(
        'weight', 1.0)
    if not weight > 0:
        raise ValueError(f"{config}: model.ncm.weight is {weight}; the "
                         f"ablation needs an NCM config (weight > 0)")


def run_variant(config, folder, ncm, seed, extra):
    """Train and test one variant; returns its wall time in seconds."""
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty: a previous run's "
                              f"checkpoints would be resumed; remove it or "
                              f"choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(folder / 'run.log', 'w') as log_file:
        done = subprocess.run(
            [sys.executable, *RUN_PIPELINE,
             *run_arguments(config, folder, ncm, seed, extra)],
            stdout=log_file, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"variant {folder.name} failed (exit "
                           f"{done.returncode}); see {folder / 'run.log'}")
    return time.monotonic() - start


def kl_table(rows, with_seed=False):
    """Markdown: did the NCM KL fall in each run?"""
    lines = ['| run | NCM KL, first epoch | NCM KL, last epoch | fell |',
             '| --- | --- | --- | --- |']
    for row in rows:
        name = f"{row['name']}, seed {row['seed']}" if with_seed else row['name']
        if row['kl_first'] is None:
            lines.append(f"| {name} | - | - | (no NCM term) |")
        else:
            lines.append(f"| {name} | {row['kl_first']:.4f} | "
                         f"{row['kl_last']:.4f} | "
                         f"{'yes' if row['kl_fell'] else 'no'} |")
    return '\n'.join(lines) + '\n'


def select_variants(names):
    """VARIANTS restricted to `names` (None = all), in the table's order."""
    if not names:
        return VARIANTS
    known = [name for name, _ in VARIANTS]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {known}")
    return tuple(v for v in VARIANTS if v[0] in names)


def run_variants(config, out, seed, extra, variants):
    """Train and test every variant with one seed into out/<name>; returns
    the rows of the KL report (with each run's wall time)."""
    rows = []
    for name, ncm in tqdm(variants, desc=f'seed {seed}', unit='run'):
        tqdm.write(f"{name}, seed {seed}: training and testing into "
                   f"{out / name}")
        seconds = run_variant(config, out / name, ncm, seed, extra)
        kl = kl_curve(out / name)
        rows.append({'name': name, 'seed': seed, 'ncm': ncm,
                     'seconds': round(seconds, 1),
                     'kl_first': kl[0] if kl else None,
                     'kl_last': kl[-1] if kl else None,
                     'kl_fell': bool(kl[-1] < kl[0]) if len(kl) > 1 else None,
                     'kl_per_epoch': kl})
    return rows


def ablate(config, out, seed=0, extra=(), variants=VARIANTS, seeds=1):
    """Run every variant into `out/<name>` (with seeds > 1: seeds seed,
    seed + 1, ... into `out/seed<s>/<name>`); write out/ablation.{md,csv,json}
    (with seeds > 1 the table is the statistics over the seeds, seeds.py,
    also in out/ablation_seeds.{md,csv,json} with the per-seed figures).

    extra: run_pipeline.py arguments given to every run (the budget, the
    dataset path, ...). Returns the Markdown text.
    """
    check_config_weight(config)
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if seeds > 1 and variants[0][0] != 'baseline':
        raise ValueError("several seeds compare every variant with the "
                         "baseline of the same seed: include the baseline")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    seed_list = [seed + k for k in range(seeds)]
    folders = {s: out if seeds == 1 else out / f'seed{s}' for s in seed_list}
    rows = []
    for s in seed_list:
        seed_rows = run_variants(config, folders[s], s, extra, variants)
        rows += seed_rows
        table = compare_runs([folders[s] / r['name'] for r in seed_rows],
                             [r['name'] for r in seed_rows],
                             out=folders[s] / 'ablation')
    if seeds > 1:
        table = summarize_seeds(
            {name: [folders[s] / name for s in seed_list]
             for name, _ in variants}, out / 'ablation_seeds')
    summary = {'config': str(config), 'seeds': seed_list,
               'extra': list(map(str, extra)),
               'total_seconds': round(time.monotonic() - start, 1),
               'runs': rows}
    title = (f"seed {seed}" if seeds == 1 else
             f"{seeds} seeds ({', '.join(map(str, seed_list))}): mean ± "
             f"standard deviation over the seeds, then the paired "
             f"difference to the baseline")
    text = (f"# KL ablation: {config}, {title}; "
            f"{' '.join(summary['extra']) or 'config budget'}\n\n{table}\n"
            f"{kl_table(rows, seeds > 1)}\nWall time: "
            + ', '.join(f"{r['name']}{f' seed {s}' if seeds > 1 else ''} "
                        f"{r['seconds']:.0f} s" for r in rows
                        for s in [r['seed']])
            + f"; total {summary['total_seconds']:.0f} s\n")
    (out / 'ablation.md').write_text(text)
    (out / 'ablation.json').write_text(json.dumps(summary, indent=2) + '\n')
    return text
