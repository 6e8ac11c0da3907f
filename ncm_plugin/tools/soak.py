"""Soak test of the training loop: many short runs of many tiny epochs with
DataLoader workers, single process and 2-rank torchrun (gloo), each watched
for a hang. Not part of the tests (it takes minutes to hours); the README
states what it found.

    python scripts/soak.py --runs 20 --epochs 60 --out soak

Every run trains a two-layer KPConv on the demo data (written on first use)
for --epochs epochs of 2 training and 1 validation step, num_workers 2,
with pipeline.step_timeout as the in-run watchdog and --run-timeout as the
outer one. A run that exits 124 (watchdog) or is killed at --run-timeout is
a hang; its log is kept. Prints and writes (soak.json) runs, epochs, hangs
and wall time.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..training.watchdog import EXIT_HUNG

RUN_PIPELINE = ('-m', 'ncm_plugin.tools.runner')
TINY = ['--dataset.steps_per_epoch_train', '2',
        '--dataset.steps_per_epoch_valid', '1', '--pipeline.batch_size', '1',
        '--pipeline.val_batch_size', '1', '--pipeline.save_ckpt_freq', '1000',
        '--model.num_layers', '2', '--model.architecture',
        '[simple, resnetb, resnetb_strided, resnetb_deformable, '
        'nearest_upsample, unary]', '--model.first_features_dim', '16',
        '--model.in_radius', '0.8', '--model.first_subsampling_dl', '0.08',
        '--model.max_in_points', '2000', '--model.batch_limit', '20000']
EPOCH = re.compile(r'=== EPOCH (\d+)/')


def run_command(kind, config, folder, epochs, workers, step_timeout, seed):
    """argv of one run: `single` (one process) or `torchrun` (2 gloo ranks)."""
    args = ['torch', '-c', str(config), '--device', 'cpu', '--seed', str(seed),
            '--main_log_dir', str(folder), '--pipeline.max_epoch',
            str(epochs - 1), '--pipeline.num_workers', str(workers),
            '--pipeline.step_timeout', str(step_timeout),
            '--pipeline.test_after_train', 'false', *TINY]
    if kind == 'torchrun':
        return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
                '2', '--master_port', str(29600 + seed % 300), *RUN_PIPELINE,
                *args]
    return [sys.executable, *RUN_PIPELINE, *args]


def soak_run(command, log_path, run_timeout):
    """(exit code or 'timeout', epochs started, seconds)."""
    start = time.monotonic()
    with open(log_path, 'w') as log_file:
        process = subprocess.Popen(command, stdout=log_file,
                                   stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=run_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            code = 'timeout'
    started = {int(m) for m in EPOCH.findall(log_path.read_text())}
    return code, len(started), time.monotonic() - start


def soak(out, runs, epochs, workers, config, step_timeout, run_timeout,
         kinds):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, start = [], time.monotonic()
    for index in tqdm(range(runs), desc='soak runs', unit='run'):
        kind = kinds[index % len(kinds)]
        folder = out / f'run{index:03d}_{kind}'
        log_path = out / f'run{index:03d}_{kind}.log'
        code, started, seconds = soak_run(
            run_command(kind, config, folder, epochs, workers, step_timeout,
                        index), log_path, run_timeout)
        hung = code in (EXIT_HUNG, 'timeout')
        rows.append({'run': index, 'kind': kind, 'exit': code,
                     'epochs': started, 'hung': hung,
                     'seconds': round(seconds, 1)})
        tqdm.write(f"run {index} ({kind}): exit {code}, {started} epochs, "
                   f"{seconds:.0f} s{' HUNG' if hung else ''}")
    summary = {
        'runs': runs, 'epochs': sum(r['epochs'] for r in rows),
        'hangs': sum(r['hung'] for r in rows),
        'failed': sum(r['exit'] != 0 and not r['hung'] for r in rows),
        'wall_seconds': round(time.monotonic() - start, 1),
        'per_kind': {k: sum(r['kind'] == k for r in rows) for k in kinds},
        'settings': {'epochs_per_run': epochs, 'num_workers': workers,
                     'config': str(config), 'step_timeout': step_timeout,
                     'run_timeout': run_timeout},
        'rows': rows}
    (out / 'soak.json').write_text(json.dumps(summary, indent=2) + '\n')
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=20)
    parser.add_argument('--epochs', type=int, default=60,
                        help='epochs per run')
    parser.add_argument('--workers', type=int, default=2,
                        help='pipeline.num_workers')
    parser.add_argument('--config', default='ncm_kpconv_demo.yml')
    parser.add_argument('--kinds', nargs='+', default=['single', 'torchrun'],
                        choices=['single', 'torchrun'],
                        help='run kinds, used in turn')
    parser.add_argument('--step-timeout', type=float, default=120,
                        help='pipeline.step_timeout of every run (s)')
    parser.add_argument('--run-timeout', type=float, default=1800,
                        help='a run still going after this is killed (s)')
    parser.add_argument('--out', default='soak', help='folder for logs')
    args = parser.parse_args(argv)
    summary = soak(args.out, args.runs, args.epochs, args.workers, args.config,
                   args.step_timeout, args.run_timeout, args.kinds)
    print(f"soak: {summary['runs']} runs, {summary['epochs']} epochs, "
          f"{summary['hangs']} hang(s), {summary['failed']} other failure(s), "
          f"{summary['wall_seconds']:.0f} s; details in "
          f"{Path(args.out) / 'soak.json'}")
    return 1 if summary['hangs'] or summary['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
