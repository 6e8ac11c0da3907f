"""Open3D-ML's run_pipeline command line, for the plugin's classes.

    python scripts/run_pipeline.py torch -c ncm_kpconv_s3dis.yml \
        --dataset_path DATA --device cuda --pipeline.max_epoch 2 \
        --model.ncm.weight 0.5

`-c` takes a path or a bare file name of a config shipped in ncm_plugin/configs/.
Dotted overrides are parsed as YAML values (numbers, booleans, lists). The
merged config is checked (config_check.py) before any data is read, the
device (CUDA must be there when asked for) and --ckpt_path (it must load)
with it.

Distributed: the same command under torchrun, e.g.

    torchrun --nproc_per_node 4 scripts/run_pipeline.py torch -c CONFIG \
        --device cuda

Ranks other than 0 log warnings only. A run stopped by SIGINT/SIGTERM saves
a checkpoint and exits with 128 + the signal number; running the same
command again resumes it.
"""
import argparse
import logging
import os
import pprint
import sys
from pathlib import Path

import numpy as np
import yaml

from ..config import SECTIONS, apply_overrides, load_config, resolve_config
from ..models.build import build_model, seed_generators
from ..training.distributed import RankZeroFailed
from ..training.totals import NonFiniteLoss
from ..training.watchdog import WorkerDied
from .config_check import ConfigError, check_config


log = logging.getLogger(__name__)


def parse_args(argv):
    """Open3D-ML's arguments, plus any number of --section.key value pairs."""
    parser = argparse.ArgumentParser(
        description='Train or test an Open3D-ML pipeline (with the NCM plugin)')
    parser.add_argument('framework', choices=['torch', 'pytorch'],
                        help='deep learning framework (torch only)')
    parser.add_argument('-c', '--cfg_file', required=True,
                        help='config file: a path, or the name of a shipped config')
    parser.add_argument('--dataset_path', help='path to the dataset')
    parser.add_argument('--ckpt_path', help='checkpoint to load')
    parser.add_argument('--device', choices=['cpu', 'cuda', 'gpu'],
                        help='device (default: cuda when available)')
    parser.add_argument('--split', default='train', choices=['train', 'test'],
                        help='train (default) or test')
    parser.add_argument('--main_log_dir', help='folder for logs and checkpoints')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--check', action='store_true',
                        help='check the merged config and exit (reads no data)')
    args, rest = parser.parse_known_args(argv)
    return args, parse_overrides(rest, parser)


def parse_overrides(tokens, parser):
    """['--model.ncm.weight', '0.5', ...] -> {'model.ncm.weight': 0.5}."""
    overrides = {}
    it = iter(tokens)
    for token in it:
        key = token[2:] if token.startswith('--') else None
        if key is None or '.' not in key or key.split('.')[0] not in SECTIONS:
            parser.error(f"unrecognized argument {token!r}: overrides look "
                         f"like --dataset.KEY, --model.KEY or --pipeline.KEY")
        if '=' in key:
            key, value = key.split('=', 1)
        else:
            value = next(it, None)
            if value is None:
                parser.error(f"{token} needs a value")
        overrides[key] = yaml.safe_load(value)
    return overrides


def apply_arguments(cfg, args):
    """The named arguments, as Open3D-ML's Config.merge_cfg_file does."""
    if args.dataset_path is not None:
        cfg['dataset']['dataset_path'] = args.dataset_path
    if args.ckpt_path is not None:
        cfg['model']['ckpt_path'] = args.ckpt_path
    if args.main_log_dir is not None:
        cfg['pipeline']['main_log_dir'] = args.main_log_dir
    if args.device is not None:
        cfg['pipeline']['device'] = 'cuda' if args.device == 'gpu' else args.device
    cfg['pipeline']['split'] = args.split
    return cfg


# The named arguments that set a config key: key -> the option.
ARGUMENT_KEYS = {'dataset.dataset_path': '--dataset_path',
                 'model.ckpt_path': '--ckpt_path',
                 'pipeline.main_log_dir': '--main_log_dir',
                 'pipeline.device': '--device'}


def set_on_command_line(args, overrides):
    """{dotted key: the option that set it} for the config checker's
    messages: the dotted overrides and the named arguments given."""
    given = {key: option for key, option in ARGUMENT_KEYS.items()
             if getattr(args, option[2:]) is not None}
    return {**{key: f'--{key}' for key in overrides}, **given}


def prepare_demo_data(dataset_cfg):
    """Write the synthetic dataset a demo config asks for, when missing.

    `dataset.demo_data: {kind: s3dis, seed: 0}` names a writer of
    ncm_plugin.datasets.demo; it is not passed on to the dataset class.
    """
    demo = dataset_cfg.pop('demo_data', None)
    path = dataset_cfg.get('dataset_path')
    if demo is None or path is None or Path(path).exists():
        return
    from ..datasets.demo import write_demo
    options = dict(demo)
    kind = options.pop('kind')
    log.info("Writing synthetic %s data to %s", kind, path)
    write_demo(kind, path, **options)


def build(cfg, seed=0):
    """Dataset, model and pipeline objects from a merged config."""
    import ncm_plugin  # noqa: F401  (fills the registries)
    from open3d._ml3d.utils import get_module
    rng = np.random.default_rng(seed)
    seed_generators(seed)
    Dataset = get_module('dataset', cfg['dataset']['name'])
    Model = get_module('model', cfg['model']['name'], 'torch')
    Pipeline = get_module('pipeline', cfg['pipeline']['name'], 'torch')
    prepare_demo_data(cfg['dataset'])
    dataset = Dataset(**cfg['dataset'], seed=rng)
    model = build_model(Model, cfg['model'], seed)
    pipeline = Pipeline(model, dataset, **cfg['pipeline'], seed=rng)
    return dataset, model, pipeline


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    primary = int(os.environ.get('RANK', 0)) == 0  # set by torchrun
    logging.basicConfig(
        level=logging.INFO if primary else logging.WARNING,
        format='%(levelname)s - %(asctime)s - %(module)s - %(message)s')
    args, overrides = parse_args(argv)
    path = None
    try:
        path = resolve_config(args.cfg_file)
        cfg = apply_arguments(load_config(path), args)
        apply_overrides(cfg, overrides, path)
        check_config(cfg, path,
                     overridden=set_on_command_line(args, overrides))
        if args.check:
            print(f"{path}: config OK")
            return None
        dataset, model, pipeline = build(cfg, args.seed)
    except ConfigError as error:
        sys.exit(f"run_pipeline: error: {error}")
    except (FileNotFoundError, KeyError, TypeError, ValueError) as error:
        # Configuration and data-path mistakes: one line, no traceback.
        message = error.args[0] if isinstance(error, KeyError) else error
        context = f" (config {path})" if path is not None and \
            str(path) not in str(message) else ""
        sys.exit(f"run_pipeline: error: {message}{context}")
    pipeline.cfg_tb = {
        'readme': 'NCM-KPConv (ncm_plugin)',
        'cmd_line': ' '.join(['run_pipeline.py'] + list(argv)),
        **{s: pprint.pformat(cfg[s], indent=2) for s in SECTIONS}
    }
    if args.split == 'test':
        pipeline.run_test()
        return pipeline
    try:
        pipeline.run_train()
    except (NonFiniteLoss, WorkerDied, RankZeroFailed) as error:
        sys.exit(f"run_pipeline: error: {error}")
    else:
        stop = getattr(pipeline, 'stop', None)
        if stop is not None and stop.requested:
            log.warning("Stopped by a signal; the checkpoint is saved, run "
                        "the same command to resume")
            sys.exit(stop.exit_code)
    return pipeline


if __name__ == '__main__':
    main()
