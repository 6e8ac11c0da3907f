"""PipelineOptions: the `pipeline` keys the plugin adds, in one place.

Open3D-ML's pipelines take any keyword and ignore the ones they do not read,
so `--pipeline.num_wokers 4` trains with no worker and says nothing. Here the
`pipeline` section is checked against the keys the stock semantic-
segmentation pipeline and the stock models' `get_optimizer` read, plus the
plugin's own below, whose defaults and types live in this dataclass only.
The stock keys that take a number get their type and range checked too
(STOCK_NUMBERS), with Open3D-ML's defaults left as they are.
"""
import difflib
import re
from dataclasses import dataclass, fields
from typing import Optional

# Keys of the `pipeline` section that Open3D-ML itself reads: the arguments of
# SemanticSegmentation/BasePipeline, the `summary` block, what the stock models'
# get_optimizer take from the pipeline config, and the runner's `seed`.
STOCK_PIPELINE_KEYS = frozenset((
    'name', 'batch_size', 'val_batch_size', 'test_batch_size', 'max_epoch',
    'learning_rate', 'lr_decays', 'save_ckpt_freq', 'adam_lr',
    'scheduler_gamma', 'momentum', 'main_log_dir', 'device', 'split',
    'train_sum_dir', 'summary', 'weight_decay', 'deform_lr_factor',
    'optimizer', 'seed'))

# The stock keys that take a number: (int or float, range). A float key
# takes an int too; checked here, defaults stay Open3D-ML's. max_epoch 0 is
# one epoch (Open3D-ML trains epochs 0..max_epoch).
STOCK_NUMBERS = {
    'batch_size': (int, '>= 1'), 'val_batch_size': (int, '>= 1'),
    'test_batch_size': (int, '>= 1'), 'max_epoch': (int, '>= 0'),
    'save_ckpt_freq': (int, '>= 1'), 'seed': (int, '>= 0'),
    'learning_rate': (float, '> 0'), 'adam_lr': (float, '> 0'),
    'deform_lr_factor': (float, '> 0'), 'weight_decay': (float, '>= 0'),
    'momentum': (float, 'in [0, 1]'), 'scheduler_gamma': (float, 'in (0, 1]'),
    'lr_decays': (float, 'in (0, 1]'),
}
# `optimizer`: the keyword arguments of torch's optimizer (PVCNN, RandLANet,
# PointTransformer, SparseConvUnet); its numbers, where present.
OPTIMIZER_NUMBERS = {
    'lr': (float, '> 0'), 'weight_decay': (float, '>= 0'),
    'momentum': (float, 'in [0, 1]'), 'betas': (float, 'in [0, 1)'),
}
_RANGES = {
    '>= 0': lambda v: v >= 0, '>= 1': lambda v: v >= 1, '> 0': lambda v: v > 0,
    'in [0, 1]': lambda v: 0 <= v <= 1, 'in (0, 1]': lambda v: 0 < v <= 1,
    'in [0, 1)': lambda v: 0 <= v < 1,
}

# Keys users bring from Open3D-ML's own distributed set-up; the plugin takes
# them from torchrun's environment instead.
LAUNCHER_KEYS = ('distributed', 'rank', 'world_size', 'backend')


@dataclass(frozen=True)
class PipelineOptions:
    """The plugin's `pipeline` settings.

    num_workers: DataLoader worker processes (0 = load in the main process).
    pin_memory: pin host batches for faster copies (CUDA only).
    test_after_train: run the test split once training ends (rank 0).
    keep_checkpoints: how many of the newest checkpoints to keep; null keeps
        all (Open3D-ML's behaviour). Keep at least 2 if a disk fault could
        spoil the newest one: resume then falls back to the previous.
    amp: autocast forward and loss in float16 on CUDA with a GradScaler; the
        NCM term is always computed in float32. Ignored (with a warning) on CPU.
    sync_batchnorm: under torchrun, replace batch norm by SyncBatchNorm so its
        statistics are taken over every rank's spheres (CUDA only). Off: each
        rank normalises with the statistics of its own spheres, and the running
        statistics of rank 0 are the ones validated and saved.
    find_unused_parameters: DistributedDataParallel's flag. KPFCNN, deformable
        blocks included, gives every trainable parameter a gradient in every
        step, so the default False is right and saves a graph traversal a step;
        set it for a custom architecture that DDP reports unused parameters for.
    step_timeout: seconds without a finished training or validation step
        after which the run stops with every thread's stack and exit code 124
        (watchdog.py); also the DataLoader's timeout for a batch from a
        worker. 0 turns the watchdog off.
    check_every: every this many steps the loop reads the loss terms (a
        non-finite one stops the run, naming the step and the term) and,
        under torchrun, the ranks agree on a stop request. Each is a wait for
        the device, so not every step.
    test_votes: coverings of each test cloud averaged by the test split
        (every backbone but PVCNN; vote 0 as is, the others turned, scaled
        and flipped as the model's augmentation settings say, seeded; see
        inference/engine.py); 1 = one covering.
    deterministic: torch.use_deterministic_algorithms for the run (and, on
        CUDA, cuDNN's deterministic kernels). Sphere choices and their
        augmentation are seeded per sphere either way, so on the CPU two runs
        of one config and seed give the same weights, with or without workers.
    """
    num_workers: int = 0
    pin_memory: bool = True
    test_after_train: bool = False
    keep_checkpoints: Optional[int] = None
    amp: bool = False
    sync_batchnorm: bool = False
    find_unused_parameters: bool = False
    step_timeout: float = 1800.0
    check_every: int = 10
    deterministic: bool = False
    test_votes: int = 1

    @classmethod
    def from_dict(cls, section, where='pipeline'):
        """The plugin's keys of a `pipeline` section, validated.

        Raises KeyError for a key neither Open3D-ML nor the plugin reads,
        TypeError for a wrong type, ValueError for a value out of range; the
        message names the key as '{where}.KEY'.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(section) - set(known) - STOCK_PIPELINE_KEYS)
        launcher = [key for key in unknown if key in LAUNCHER_KEYS]
        if launcher:
            raise KeyError(
                f"{where}.{launcher[0]}: distributed training is launched with "
                f"torchrun (torchrun --nproc_per_node N scripts/run_pipeline.py "
                f"...), which sets the ranks; remove the key")
        if unknown:
            valid = sorted(STOCK_PIPELINE_KEYS | set(known))
            close = difflib.get_close_matches(unknown[0], valid, n=1)
            raise KeyError(
                f"{where}.{unknown[0]}: unknown key"
                f"{f' (did you mean {close[0]}?)' if close else ''}"
                f"{f'; also unknown: {unknown[1:]}' if unknown[1:] else ''}; "
                f"known keys are {valid}")
        check_stock_numbers(section, where)
        values = {}
        for key, field in known.items():
            if key not in section:
                continue
            value = section[key]
            optional = field.type == Optional[int]
            expected = int if optional else field.type
            if value is None and optional:
                values[key] = None
                continue
            accepted = (int, float) if expected is float else expected
            if (isinstance(value, bool) and expected is not bool) or \
                    not isinstance(value, accepted):
                raise TypeError(f"{where}.{key} must be "
                                f"{'an int or null' if optional else f'a {expected.__name__}'}"
                                f", got {value!r}")
            values[key] = float(value) if expected is float else value
        options = cls(**values)
        if options.num_workers < 0:
            raise ValueError(f"{where}.num_workers must be >= 0, got "
                             f"{options.num_workers}")
        if options.test_votes < 1:
            raise ValueError(f"{where}.test_votes must be >= 1 (coverings "
                             f"of each test cloud), got {options.test_votes}")
        if options.check_every < 1:
            raise ValueError(f"{where}.check_every must be >= 1 step, got "
                             f"{options.check_every}")
        if options.step_timeout < 0:
            raise ValueError(f"{where}.step_timeout must be >= 0 seconds (0: "
                             f"no watchdog), got {options.step_timeout}")
        if options.keep_checkpoints is not None and options.keep_checkpoints < 1:
            raise ValueError(f"{where}.keep_checkpoints must be >= 1 or null "
                             f"(keep all), got {options.keep_checkpoints}")
        return options


def check_stock_numbers(section, where='pipeline'):
    """Type and range of the stock numeric keys of a `pipeline` section
    (STOCK_NUMBERS, and `optimizer`'s OPTIMIZER_NUMBERS). lr_decays is
    checked only when it is a number (KPConv's own code takes a mapping
    epoch -> decay); a seed may also be the numpy Generator the runner
    passes to the pipeline."""
    for key, (kind, bounds) in STOCK_NUMBERS.items():
        value = section.get(key)
        numeric = isinstance(value, (int, float)) and \
            not isinstance(value, bool)
        if value is None or (key == 'lr_decays' and not numeric) or \
                (key == 'seed' and _is_generator(value)):
            continue
        _check_number(f"{where}.{key}", value, kind, bounds)
    optimizer = section.get('optimizer')
    if optimizer is None:
        return
    if not isinstance(optimizer, dict):
        raise TypeError(f"{where}.optimizer must be a mapping of the "
                        f"optimizer's arguments (lr, ...), got {optimizer!r}")
    for key, (kind, bounds) in OPTIMIZER_NUMBERS.items():
        value = optimizer.get(key)
        if key == 'betas' and value is not None:
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise TypeError(f"{where}.optimizer.betas must be a list of "
                                f"two floats, got {value!r}")
            for beta in value:
                _check_number(f"{where}.optimizer.betas", beta, kind, bounds)
        elif value is not None:
            _check_number(f"{where}.optimizer.{key}", value, kind, bounds)


def _check_number(key, value, kind, bounds):
    """TypeError unless `value` is a `kind` (a float also takes an int),
    ValueError unless it is within `bounds` (a key of _RANGES)."""
    accepted = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, accepted):
        hint = ''
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            hint = (f" (YAML reads {value} as a string; write "
                    f"{_yaml_float(value.strip())})")
        raise TypeError(f"{key} must be "
                        f"{'an int' if kind is int else 'a number'} {bounds}, "
                        f"got {value!r}{hint}")
    if not _RANGES[bounds](value):
        raise ValueError(f"{key} must be {bounds}, got {value!r}")


_SCIENTIFIC = re.compile(r'[-+]?\d+(\.\d*)?[eE][-+]?\d+')


def _yaml_float(text):
    """'1e-3' -> '1.0e-3': YAML 1.1 reads a number in scientific notation
    only with a dot in the mantissa and a sign in the exponent."""
    mantissa, _, exponent = text.lower().partition('e')
    if '.' not in mantissa:
        mantissa += '.0'
    if exponent[0] not in '+-':
        exponent = '+' + exponent
    return f"{mantissa}e{exponent}"


def _is_generator(value):
    import numpy as np
    return isinstance(value, (np.random.Generator, np.random.SeedSequence))


def device_type(device):
    """'cuda' or 'cpu' for a config's device string (None = cuda if present)."""
    if device is None:
        import torch
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return 'cuda' if str(device).startswith(('cuda', 'gpu')) else str(device)
