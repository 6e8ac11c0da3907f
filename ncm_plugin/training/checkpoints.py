"""Training checkpoints that survive a killed run, and what a resume needs.

Files: `<logs_dir>/checkpoint/ckpt_<epoch:05d>.pth`, Open3D-ML's names, so its
own `load_ckpt` and `latest_torch_ckpt` still find them. Each is written to a
hidden temporary file in the same folder, fsync'ed, renamed over the final
name and the folder fsync'ed: a run killed at any moment leaves either the
previous set of checkpoints or the new one, plus at most a stale
`.ckpt_*.tmp` (which the next run removes). Only the newest
`keep_checkpoints` files are kept.

Contents (a dict; `torch.load(..., weights_only=True)` reads it):
    epoch                 the last epoch whose training steps ran (0-based)
    steps_done            present only in a checkpoint written by SIGINT/
                          SIGTERM in the middle of `epoch`: batches of it done
    model_state_dict      the bare model's (never DDP's 'module.' names)
    optimizer_state_dict, scheduler_state_dict   as Open3D-ML
    scaler_state_dict     the GradScaler's, with pipeline.amp on CUDA
    random_states         one entry per rank: torch (+ CUDA), numpy and python
                          `random` generator states, see `random_state()`,
                          and the model's own numpy Generator (`model_rng`,
                          see `generator_state()`)
    best                  {'metric': 'validation mIoU', 'value', 'epoch'} or None
    world_size            ranks of the run that wrote it
    config                {'dataset', 'model', 'pipeline'}: the run's
                          resolved settings (Open3D-ML's defaults merged in),
                          plain data (format 2 on)
    input_settings        what shapes the model's input beyond the model's
                          own keys: the dataset class, its label values,
                          ignored labels and class names, and a dataset's
                          own resolved settings (LASDataset: grid, features
                          and their scaling, colour use, class map) (format
                          2 on)
    format                CHECKPOINT_FORMAT

Policy for older formats: a checkpoint of format 1 (no config) still
resumes training (what a resume reads has not changed); code that needs the
config from the checkpoint (applying a model to new data) refuses it with
an error that asks for the run's config file (`-c CONFIG`).
Under torchrun the per-rank states are gathered to rank 0 only (each holds
every point's coverage), and a resume sends each rank its own.

Test hook: with the environment variable NCM_CHECKPOINT_WRITE_PAUSE=<seconds>
the writer writes the first half of the bytes, flushes them and sleeps that
long before writing the rest, so that a test can kill the process inside a
checkpoint write (tests/test_checkpoints.py). Nothing else reads it.
"""
import io
import logging
import os
import random
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 'ncm_plugin.checkpoint/2'
# Formats a resume accepts.
RESUMABLE_FORMATS = ('ncm_plugin.checkpoint/1', CHECKPOINT_FORMAT)
NAME_PATTERN = re.compile(r'^ckpt_(\d+)\.pth$')
TEMP_PREFIX = '.ckpt_'
TEMP_SUFFIX = '.tmp'
PAUSE_ENV = 'NCM_CHECKPOINT_WRITE_PAUSE'


def checkpoint_name(epoch):
    return f'ckpt_{epoch:05d}.pth'


def list_checkpoints(folder):
    """[(epoch, path)] of the checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / m.group(0))
             for m in map(NAME_PATTERN.match, os.listdir(folder)) if m]
    return sorted(found)


def write_atomic(obj, path):
    """torch.save(obj, path) such that `path` is never seen half-written.

    Temporary file in the same folder (same file system, so the rename is
    atomic), fsync of its content, os.replace, fsync of the folder so that
    the rename itself survives a power cut.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'{TEMP_PREFIX}{path.stem}.',
                               suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            pause = float(os.environ.get(PAUSE_ENV, 0) or 0)
            if pause > 0:
                _write_with_pause(obj, f, pause)
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_with_pause(obj, f, seconds):
    """The test hook: half the bytes, flushed, a pause, the rest."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    f.write(data[:len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    log.info("Checkpoint write paused for %.1f s (%s)", seconds, PAUSE_ENV)
    time.sleep(seconds)
    f.write(data[len(data) // 2:])


def _fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is done
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder):
    """Delete the temporary files of writes that were killed."""
    for tmp in Path(folder).glob(f'{TEMP_PREFIX}*{TEMP_SUFFIX}'):
        log.info("Removing %s, left by a checkpoint write that was "
                 "interrupted", tmp)
        tmp.unlink(missing_ok=True)


def prune(folder, keep):
    """Keep the `keep` newest checkpoints of `folder` (all if keep is None)."""
    if keep is None:
        return []
    old = [path for _, path in list_checkpoints(folder)[:-keep]]
    for path in old:
        path.unlink(missing_ok=True)
    return old


class CheckpointError(ValueError):
    """A file that does not load as a checkpoint; the message names it."""


def load(path):
    """A checkpoint read on the CPU, with weights_only (no code runs).

    Raises CheckpointError naming `path` when the file is missing, does not
    unpickle or holds something else than a dict. A weights_only failure is
    a page about weights_only with the unpickler's reason in the middle: the
    message keeps the reason only.
    """
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except Exception as error:  # noqa: BLE001 (whatever torch.load raises)
        text, marker = str(error), 'WeightsUnpickler error:'
        if marker in text:
            reason = text.split(marker, 1)[1].strip().splitlines() or ['?']
            reason = f"unpickling failed: {reason[0]}"
        else:
            reason = f"{type(error).__name__}: {text.strip().splitlines()[0]}" \
                if text.strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a checkpoint ({reason})") \
            from error
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a checkpoint (it holds a "
                              f"{type(ckpt).__name__}, not a dict)")
    return ckpt


def load_latest_readable(folder):
    """(path, checkpoint) of the newest checkpoint that loads, or (None, None).

    A checkpoint that cannot be read (truncated by a disk fault or a copy
    that was cut short) is skipped with a warning naming it, and the one
    before it is tried.
    """
    for epoch, path in reversed(list_checkpoints(folder)):
        try:
            return path, load(path)
        except Exception as error:  # noqa: BLE001 (any unreadable file)
            log.warning("Skipping unreadable checkpoint %s (%s: %s); trying "
                        "the previous one", path, type(error).__name__,
                        str(error).splitlines()[0] if str(error) else '')
    return None, None


def check_resumable(ckpt, path):
    """Raise ValueError when `ckpt` (from `path`) is of a format this code
    cannot resume from; Open3D-ML's own checkpoints (no format) resume their
    weights, optimizer and scheduler."""
    found = ckpt.get('format')
    if found is not None and found not in RESUMABLE_FORMATS:
        raise ValueError(f"{path} is a checkpoint of format {found!r}; this "
                         f"version resumes {list(RESUMABLE_FORMATS)}")


def run_config(config):
    """The config of a run, as plain data that a weights_only load reads:
    {'dataset': {...}, 'model': {...}, 'pipeline': {...}}; values that are
    not plain (numpy scalars, paths, tuples) become their plain form."""
    return {section: plain(values) for section, values in config.items()}


def config_of(ckpt, path):
    """The run config stored in a checkpoint; a clear error for one written
    before checkpoints held it."""
    if 'config' not in ckpt:
        raise ValueError(
            f"{path} holds no config (checkpoint format "
            f"{ckpt.get('format', 'of Open3D-ML')!r}, written before format "
            f"{CHECKPOINT_FORMAT!r}): pass the run's config file with -c "
            f"CONFIG")
    return ckpt['config']


def plain(value):
    """`value` as dicts with str keys, lists, str, int, float, bool, None."""
    if isinstance(value, dict) or hasattr(value, 'items'):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# -- random generators --------------------------------------------------------
def random_state(device=None):
    """This process's generator states, as tensors and plain numbers (so a
    weights_only load accepts them); on CUDA the state of this rank's own
    device only (a resumed rank may see fewer devices than the one that
    saved)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': {'name': name, 'keys': torch.from_numpy(keys.astype(np.int64)),
                  'pos': int(pos), 'has_gauss': int(has_gauss),
                  'cached_gaussian': float(cached)},
        'python': {'version': version, 'internal': list(internal),
                   'gauss_next': gauss_next},
    }
    if device is not None and torch.device(device).type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state, device=None):
    """Restore what `random_state()` captured (the CUDA state onto this
    rank's `device`)."""
    torch.set_rng_state(state['torch'])
    numpy = state['numpy']
    np.random.set_state((numpy['name'],
                         numpy['keys'].numpy().astype(np.uint32),
                         numpy['pos'], numpy['has_gauss'],
                         numpy['cached_gaussian']))
    python = state['python']
    random.setstate((python['version'], tuple(python['internal']),
                     python['gauss_next']))
    if 'cuda' in state and device is not None and \
            torch.device(device).type == 'cuda':
        torch.cuda.set_rng_state(state['cuda'], device)


def generator_state(generator):
    """A numpy Generator's state with its large integers as strings (a
    weights_only load accepts them). Open3D-ML models draw their
    augmentation (RandLA-Net, PointTransformer), their sampling (PVCNN) or
    their grid placement (SparseConvUnet) from their own `model.rng`."""
    return _map_ints(generator.bit_generator.state, str)


def set_generator_state(generator, state):
    generator.bit_generator.state = _map_ints(state, int)


def _map_ints(state, convert):
    if isinstance(state, dict):
        return {key: _map_ints(value, convert) for key, value in state.items()}
    if isinstance(state, (int, str)) and not isinstance(state, bool) and \
            str(state).lstrip('-').isdigit():
        return convert(state)
    return state
