"""ncm-predict: a trained model applied to new data, every original point
labelled: LAS/LAZ tiles (a LASDataset model), or PLY files, S3DIS room
folders, Semantic3D .txt scans and .npy/.npz arrays (an S3DIS, ScanNet or
Semantic3D model).

    ncm-predict --ckpt RUN/checkpoint/ckpt_00100.pth TILES/*.laz --out classified/ \
        [--votes 4] [--device cuda]

The checkpoint is enough: it records the model's config and the dataset
settings that shape its input (grid, features and their scaling, colour,
class map and names); `-c CONFIG` and dotted overrides (`--model.KEY
VALUE`) still win. Each input gets a copy in --out with every point and
dimension of the original, `Classification` untouched (unless
--write-classification) and new extra-bytes dimensions
`PredictedClassification`, `entropy` and one probability per class
(datasets/lidar/las_output.py). Outputs are written atomically; an output
made by the same checkpoint and settings is skipped (so an interrupted run
goes on where it stopped), any other is replaced. Under torchrun, with --shard I/N
or in a SLURM array job, each process takes every N-th file (sorted by
path). A file that cannot be used is named with the reason, the others are
still classified, and the exit status is 1.

Clouds (inference/clouds.py) get a PLY (a PLY input: every vertex property
kept, plus `label` and one probability per class) or an .npz (`point`,
`label`, `probabilities`, `class_names`), see inference/cloud_output.py.
Backbones (inference/engine.py): KPConv on planned spheres, RandLA-Net on
its own crops (its num_points nearest points, where the cloud is least
covered), PointTransformer and SparseConvUnet on the whole scene; not
PVCNN. --num-workers builds the batches in DataLoader workers.
"""
import argparse
import glob
import json
import logging
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

LAS_SUFFIXES = ('.las', '.laz')


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='ncm-predict',
        description='Label every point of LAS/LAZ tiles, PLY files, S3DIS '
        'rooms, Semantic3D scans or .npy/.npz arrays with a trained model')
    parser.add_argument('inputs', nargs='+',
                        help='files, room folders or glob patterns')
    parser.add_argument('--ckpt', required=True, help='the checkpoint')
    parser.add_argument('--out', required=True, help='folder of the outputs')
    parser.add_argument('-c', '--cfg_file', help="a config that replaces the "
                        "checkpoint's (needed for checkpoints that hold none)")
    parser.add_argument('--votes', type=int, default=1,
                        help='coverings averaged: 1 = one, N adds N-1 '
                        'seeded turns, scalings and flips (default 1)')
    parser.add_argument('--device', default='cpu',
                        help='cpu (default) or cuda')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the votes and of the model build')
    parser.add_argument('--overwrite', action='store_true',
                        help='classify again even where an output of the '
                        'same checkpoint and settings exists')
    parser.add_argument('--write-classification', action='store_true',
                        help='also write the prediction into Classification')
    parser.add_argument('--probabilities', default='all',
                        choices=['all', 'predicted', 'none'],
                        help='probability dimensions: one per class (all, '
                        'default), the predicted class only, or none')
    parser.add_argument('--keep-codes', type=int, nargs='*',
                        default=None, metavar='CODE',
                        help='ASPRS codes that are not model input and keep '
                        'their class (default: 7 18 65)')
    parser.add_argument('--shard', help='I/N: take files I, I+N, ... '
                        '(0-based; default: from torchrun or SLURM arrays)')
    parser.add_argument('--buffer', type=float, default=0.0, metavar='METRES',
                        help="points of the other input tiles within this "
                        "distance of a tile are its edge points' context "
                        "(used, not written; default 0)")
    parser.add_argument('--batch-size', type=int, default=None,
                        help='spheres (KPConv) or crops (RandLA-Net) a batch '
                        "at most (default: KPConv up to its batch_limit "
                        "points, RandLA-Net the config's test_batch_size)")
    parser.add_argument('--num-workers', type=int, default=0,
                        help='DataLoader workers building the batches while '
                        'the model runs (default 0: in the main process)')
    parser.add_argument('--chunk-points', type=int, default=1_000_000,
                        help='points read and written at a time')
    args, rest = parser.parse_known_args(argv)
    from .runner import parse_overrides
    return args, parse_overrides(rest, parser), parser


def expand_inputs(patterns):
    """Sorted unique paths of files and glob patterns; a pattern that
    matches nothing is a ValueError naming it."""
    found = set()
    for pattern in patterns:
        matches = glob.glob(pattern) if glob.has_magic(pattern) else \
            [pattern]
        if not matches:
            raise ValueError(f"{pattern}: matches no file")
        found.update(matches)
    return sorted(found)


def is_las(path):
    return Path(path).suffix.lower() in LAS_SUFFIXES


def output_name(path):
    """The output's file name: a tile's own (a .copc.laz becomes .laz); a
    cloud's as inference/cloud_output.py names it."""
    if not is_las(path):
        from ..inference.cloud_output import output_name as cloud_name
        return cloud_name(path)
    name = Path(path).name
    if name.lower().endswith('.copc.laz'):
        name = name[:-len('.copc.laz')] + '.laz'
    return name


def shard_of(text, environ=None):
    """(index, count) of this process's share of the files: --shard I/N,
    else torchrun's RANK/WORLD_SIZE, else a SLURM array's task id/count,
    else (0, 1)."""
    environ = os.environ if environ is None else environ
    if text:
        try:
            index, count = (int(v) for v in text.split('/'))
        except ValueError:
            raise ValueError(f"--shard {text}: expected I/N, e.g. 0/4") \
                from None
    elif int(environ.get('WORLD_SIZE', 1)) > 1:
        index, count = int(environ['RANK']), int(environ['WORLD_SIZE'])
    elif 'SLURM_ARRAY_TASK_ID' in environ:
        first = int(environ.get('SLURM_ARRAY_TASK_MIN', 0))
        index = int(environ['SLURM_ARRAY_TASK_ID']) - first
        count = int(environ.get('SLURM_ARRAY_TASK_COUNT', 1))
    else:
        index, count = 0, 1
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: I must be in 0..N-1")
    return index, count


def process_device(device):
    """Under torchrun a CUDA process takes its own GPU (LOCAL_RANK modulo
    the GPUs it sees)."""
    import torch
    if device.type != 'cuda' or int(os.environ.get('WORLD_SIZE', 1)) <= 1:
        return device
    index = int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()
    return torch.device('cuda', index)


def plan(inputs, out, shard):
    """[(input, output)] of this shard; two inputs of one output name are a
    ValueError before anything runs."""
    paths = expand_inputs(inputs)
    targets = {}
    for path in paths:
        name = output_name(path)
        if name in targets:
            raise ValueError(f"{targets[name]} and {path} would both be "
                             f"written to {Path(out) / name}")
        targets[name] = path
    index, count = shard
    return [(Path(p), Path(out) / output_name(p))
            for i, p in enumerate(paths) if i % count == index]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=logging.INFO,
        format='%(levelname)s - %(asctime)s - %(module)s - %(message)s')
    args, overrides, parser = parse_args(argv)
    try:
        return run(args, overrides)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"ncm-predict: error: {error}")


def run(args, overrides):
    from ..config import load_config, resolve_config
    from ..datasets.lidar.las import LasError
    from ..inference import cloud_output
    from ..inference.clouds import CloudError
    from ..inference.indoor import classify_cloud, cloud_provenance, uses_colour
    from ..datasets.lidar.las_output import read_provenance
    from ..inference.lidar import KEEP_CODES, classify_tile, context_tiles
    from ..inference.engine import covering_class, default_batch_size
    from ..inference.trained import load_trained
    from ..training.devices import require_device
    if args.votes < 1:
        raise ValueError(f"--votes must be >= 1, got {args.votes}")
    if args.buffer < 0:
        raise ValueError(f"--buffer must be >= 0 metres, got {args.buffer}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got "
                         f"{args.num_workers}")
    device = process_device(require_device(args.device))
    every = expand_inputs(args.inputs)
    jobs = plan(every, args.out, shard_of(args.shard))
    config = (load_config(resolve_config(args.cfg_file)) if args.cfg_file
              else None)
    if not Path(args.ckpt).is_file():
        raise FileNotFoundError(f"{args.ckpt}: no such checkpoint")
    trained = load_trained(args.ckpt, config, overrides, args.seed)
    try:
        covering_class(trained.model)
    except ValueError as error:
        raise ValueError(f"{args.ckpt}: {error}") from None
    batching = dict(batch_size=args.batch_size or default_batch_size(
                        trained.model, trained.config.get('pipeline')),
                    num_workers=args.num_workers)
    # A LASDataset model reads tiles; the others (S3DIS, ScanNet, Semantic3D)
    # read clouds, and say now if their dataset is none of these.
    lidar_model = 'dataset' in trained.input_settings
    if not lidar_model:
        uses_colour(trained)
    trained.model.to(device)
    keep = tuple(KEEP_CODES if args.keep_codes is None else args.keep_codes)
    options = dict(votes=args.votes, seed=args.seed, keep_codes=list(keep),
                   buffer=args.buffer,
                   write_classification=args.write_classification,
                   probabilities=args.probabilities,
                   # KPConv's scores move by ~1e-4 with the batches.
                   batch_size=batching['batch_size'])
    # Every tile's header once, for the others' --buffer.
    context = (context_tiles([p for p in every if is_las(p)],
                             trained.input_settings['dataset'])
               if lidar_model and args.buffer > 0 else [])
    provenance = (trained.provenance(**options) if lidar_model else
                  cloud_provenance(trained, args.votes, args.seed,
                                   batching['batch_size']))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    done, skipped, failed, points = [], [], [], 0
    start = time.perf_counter()
    for source, target in jobs:
        if is_las(source) != lidar_model:
            log.error("%s: %s", source, "a LAS/LAZ model reads .las and .laz "
                      "tiles" if lidar_model else "this model was trained on "
                      "clouds, not LAS/LAZ tiles")
            failed.append(source)
            continue
        if target.resolve() == source.resolve():
            log.error("%s: the output would replace the input; choose "
                      "another --out", source)
            failed.append(source)
            continue
        read = read_provenance if lidar_model else \
            cloud_output.read_provenance
        if target.exists() and not args.overwrite:
            if read(target) == provenance:
                log.info("%s: already classified by this checkpoint with "
                         "these settings, skipped", target)
                skipped.append(source)
                continue
            log.info("%s exists from another checkpoint or other settings: "
                     "replacing it", target)
        try:
            # Counts points x the spheres that hold them.
            with tqdm(desc=source.name, unit='pass', unit_scale=True) as bar:
                if lidar_model:
                    report = classify_tile(
                        trained, source, target, votes=args.votes,
                        seed=args.seed, device=device, keep_codes=keep,
                        write_classification=args.write_classification,
                        probabilities=args.probabilities,
                        chunk_points=args.chunk_points, progress=bar,
                        neighbours=context,
                        buffer=args.buffer, provenance=provenance,
                        **batching)
                else:
                    report = classify_cloud(
                        trained, source, target, votes=args.votes,
                        seed=args.seed, device=device, progress=bar,
                        **batching)
        except (LasError, CloudError, FileNotFoundError) as error:
            log.error("%s", error)
            failed.append(source)
            continue
        points += report['points']
        done.append(source)
        log_confusion(target, report)
    seconds = time.perf_counter() - start
    log.info("ncm-predict: %d file(s) classified, %d skipped, %d failed; "
             "%d points in %.1f s", len(done), len(skipped), len(failed),
             points, seconds)
    if failed:
        sys.exit(f"ncm-predict: {len(failed)} file(s) failed: "
                 f"{', '.join(str(p) for p in failed)}")
    return {'done': done, 'skipped': skipped, 'failed': failed,
            'points': points, 'seconds': seconds}


def log_confusion(target, report):
    """The prediction against the input's own classes (a tile's
    Classification codes, a cloud's labels: a LiDAR user's quality check),
    logged and written beside the output."""
    confusion = report.get('confusion')
    if not confusion:
        return
    table = {}
    for (code, predicted), count in sorted(confusion.items()):
        table.setdefault(str(code), {})[str(predicted)] = int(count)
    path = target.with_name(target.name + '.confusion.json')
    path.write_text(json.dumps(table, indent=1) + '\n')
    log.info("%s: prediction against the input's classes (class in the "
             "file: {predicted class: points}), also in %s: %s", target, path,
             json.dumps(table))


if __name__ == '__main__':
    main()
