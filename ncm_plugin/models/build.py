"""Building a model the same way whatever ./kernels/ holds: the command
line's runs and the prediction command build their models here."""
import contextlib
import fcntl
import random
from pathlib import Path

import numpy as np
import torch


@contextlib.contextmanager
def one_process_at_a_time(lock_path):
    """Hold an exclusive lock on `lock_path` in the block. KPConv writes its
    kernel dispositions to ./kernels/ when it builds a model, not atomically:
    torchrun's ranks, starting together in one folder, take turns."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def seed_generators(seed):
    """torch's, numpy's and random's global generators: the model's initial
    weights (torch) and KPConv's kernel points (numpy) come from them."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def build_model(Model, model_cfg, seed):
    """The model, the same whether ./kernels/ already holds KPConv's kernel
    dispositions or not.

    KPConv loads each disposition from ./kernels/dispositions/, generating
    and saving it first when missing, then turns it by a random rotation:
    generating draws from numpy's generator, so a first run in a folder
    would get other kernel points than later runs, and under torchrun the
    rank that generated them others than the ranks that loaded them. So
    when the first build generated a file, the generators are seeded again
    and the model built again, from the files."""
    folder = Path('kernels') / 'dispositions'
    with one_process_at_a_time(Path('kernels') / '.lock'):
        before = set(folder.glob('*')) if folder.is_dir() else set()
        seed_generators(seed)
        model = Model(**model_cfg, seed=np.random.default_rng(seed))
        if set(folder.glob('*')) - before:
            seed_generators(seed)
            model = Model(**model_cfg, seed=np.random.default_rng(seed))
    return model
