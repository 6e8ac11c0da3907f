"""The preprocessed clouds of a split, read once per run and memory-mapped
where spheres are cropped.

Open3D-ML's TorchDataloader gets a cloud for every item: from its Cache (a
pickled dict of the whole cloud, KD-tree included, loaded twice per item) or
by running the preprocess again, then KPConv's transform copies the whole
cloud before it crops one sphere. That is O(cloud) per sphere: tens of
megabytes for an S3DIS room, gigabytes for a 1 km LiDAR tile. Here the
sampler reads each cloud once, when the run starts (it needs the points and
the search tree in the main process anyway, to choose the spheres), and
writes each of its arrays to a .npy file of a folder that lives as long as
the run; the main process and every DataLoader worker memory-map them. A
sphere then reads only its own points, from the page cache the OS shares
between processes (fork server and spawn workers share no memory
copy-on-write), and no process holds a private copy of a cloud.

Bound: the folder holds, per preprocessed point of the split, its point
(3 x float32), features and label: 4 (3 + F) + 4 bytes (S3DIS, colour: 28
bytes a point), in the system's temporary folder (TMPDIR), removed when the
run ends (a run killed by SIGKILL leaves it: `ncm_clouds_*`).
"""
import shutil
import tempfile
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np

# Not stored: the search tree stays with the main process's sampler (the
# only place that searches), and Open3D-ML's test-split reprojection.
LEFT_OUT = ('search_tree', 'proj_inds')


class CloudStore:
    """Cloud i's arrays (point, feat, label, ncm_target...) as read-only
    memory maps (`cloud(i)`); pickles as the folder's name only."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix='ncm_clouds_'))
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.folder),
                                        ignore_errors=True)
        self.entries, self._open = [], {}

    def add(self, data):
        """Store one preprocessed cloud (a dict); returns its index."""
        index, entry = len(self.entries), {}
        for key, value in data.items():
            if key in LEFT_OUT:
                continue
            if isinstance(value, np.ndarray) and value.dtype != object:
                name = f'{index}_{key}.npy'
                np.save(self.folder / name, value)
                entry[key] = ('array', name)
            else:
                entry[key] = ('value', value)
        self.entries.append(entry)
        return index

    def cloud(self, index):
        """{key: read-only memmap or value} of cloud `index`, opened once
        per process."""
        if index not in self._open:
            self._open[index] = {
                key: (np.load(self.folder / value, mmap_mode='r')
                      if kind == 'array' else value)
                for key, (kind, value) in self.entries[index].items()}
        return self._open[index]

    def close(self):
        """Remove the folder now (the main process's store only)."""
        self._open.clear()
        if self._remove is not None:
            self._remove()

    def __len__(self):
        return len(self.entries)

    def __getstate__(self):
        # A worker's copy opens the files but never removes them.
        return {'folder': self.folder, 'entries': self.entries}

    def __setstate__(self, state):
        self.__dict__.update(state, _open={}, _remove=None)


# Per process (the main one and each DataLoader worker): bytes of arrays of
# the preprocessed clouds KeptClouds keeps.
KEPT_BYTES = 2 ** 30


class KeptClouds:
    """The preprocessed clouds this process has made, the most
    recently used kept up to `limit` bytes of arrays (search trees not
    counted): for the backbones whose items read a whole cloud and whose
    preprocess draws nothing (RandLA-Net, PointTransformer), where
    Open3D-ML preprocesses the whole cloud again for every item (or, with
    its cache, reads it whole). Each `get` gives fresh copies of the arrays:
    a transform may write into what it gets."""

    def __init__(self, limit=KEPT_BYTES):
        # {key: (cloud, bytes of its arrays)}, least recently used first.
        self.limit, self.bytes, self.clouds = int(limit), 0, OrderedDict()

    def get(self, key, make):
        """The cloud of `key` (its index in the split), made by `make()`
        the first time."""
        if key in self.clouds:
            self.clouds.move_to_end(key)
            data = self.clouds[key][0]
        else:
            data = make()
            size = sum(v.nbytes for v in data.values()
                       if isinstance(v, np.ndarray))
            if size <= self.limit:
                self.clouds[key] = (data, size)
                self.bytes += size
                while self.bytes > self.limit:
                    self.bytes -= self.clouds.popitem(last=False)[1][1]
        return {name: value.copy() if isinstance(value, np.ndarray)
                else value for name, value in data.items()}

    def __getstate__(self):
        # A worker starts with none: it makes and keeps its own.
        return {'limit': self.limit}

    def __setstate__(self, state):
        self.__init__(state['limit'])
