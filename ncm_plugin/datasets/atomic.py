"""Writing converted files so that a reader never sees a partial one.

A conversion killed half-way (Ctrl-C, out of memory, a full disk) must not
leave a truncated file that the next run or the loader takes for a finished
one: every file is written under a temporary name in its own folder and
renamed into place (``os.replace`` is atomic on one file system).
"""
import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; it becomes ``path`` if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the usual mode
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_npy_atomic(array, path):
    """``np.save(path, array)``, atomically."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        np.save(f, array)
