"""Raw S3DIS annotations -> the ``original_pkl`` cache the stock loader reads.

The stock ``S3DIS.create_ply_files`` does this conversion once, on first use,
but it no longer runs (``pandas.read_csv(delim_whitespace=True)`` is gone in
pandas 3), it expects all 272 rooms of the full download, and it chokes on the
handful of corrupted rows of the real dataset (a NUL or control byte inside a
number, e.g. ``185\\x00187`` in Area_3/hallway_2). The functions here write the
same files, ``original_pkl/Area_N_<room>.pkl`` holding the pickled list
``[pc_label [N, 7] float64 = x y z r g b label, bboxes]``, with bboxes built by
the stock ``get_min_bbox``, while:

* reading every annotation file with the pandas C parser (works with pandas 3);
* skipping corrupted rows, each with a warning naming file and line;
* converting only the rooms that exist and have no cache file yet, in a
  process pool;
* writing each pkl atomically, so an interrupted run leaves no truncated cache
  file (at most an ignored ``*.tmp`` next to it) and the next run completes it.

Raw layout: ``dataset_path/Area_N/<room>/Annotations/<class>_<k>.txt``, one
point per line, ``x y z r g b`` separated by spaces.
"""
import io
import logging
import multiprocessing
import os
import pickle
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from open3d._ml3d.datasets.s3dis import S3DIS
from open3d._ml3d.datasets.utils import get_min_bbox

from ..atomic import atomic_path

log = logging.getLogger(__name__)

# Label index = position in the stock label_to_names; unknown classes (the real
# dataset has e.g. ``stairs_1.txt``) are stored as clutter, as the stock does.
CLASS_NAMES = tuple(S3DIS.get_label_to_names().values())
UNKNOWN_CLASS = 'clutter'
CACHE_DIR = 'original_pkl'
VALUES_PER_ROW = 6  # x y z r g b

# Bytes a valid row may contain: digits, sign, decimal point, exponent, blanks.
_NUMBER_BYTES = b'0123456789.-+eE'
_BLANK_BYTES = b' \t\r'
_ALLOWED = np.zeros(256, dtype=bool)
_ALLOWED[list(_NUMBER_BYTES + _BLANK_BYTES + b'\n')] = True
_BLANK = np.zeros(256, dtype=bool)
_BLANK[list(_BLANK_BYTES + b'\n')] = True


class SkippedRow(NamedTuple):
    """A corrupted row left out of the cache; ``line`` is 1-based."""
    file: Path
    line: int
    reason: str


class RoomResult(NamedTuple):
    """What converting one room produced; ``path`` is None if nothing was
    written, ``left_out`` are the annotation files without any valid row."""
    room: Path
    path: Path | None
    rows: int
    skipped: list[SkippedRow]
    left_out: list[Path]


class ConversionReport(NamedTuple):
    """One conversion run: pkl files written, pkl files already cached and
    kept, corrupted rows skipped."""
    written: list[Path]
    cached: list[Path]
    skipped: list[SkippedRow]


def find_rooms(dataset_path):
    """Room folders ``Area_*/<room>`` holding an ``Annotations/*.txt``, sorted."""
    annotations = Path(dataset_path).glob('Area_*/*/Annotations/*.txt')
    return sorted({file.parent.parent for file in annotations})


def cache_path(dataset_path, room):
    """``dataset_path/original_pkl/Area_N_<room>.pkl``, the stock file name."""
    room = Path(room)
    return Path(dataset_path) / CACHE_DIR / f'{room.parent.name}_{room.name}.pkl'


def class_of(annotation_file):
    """Class of an annotation file: its name before the first ``_``; a name
    that is not an S3DIS class gives clutter."""
    name = Path(annotation_file).name.split('_')[0]
    return name if name in CLASS_NAMES else UNKNOWN_CLASS


def read_annotation(path):
    """Rows of one annotation file, without its corrupted rows.

    Returns ``values [N, 6] float64`` (x y z r g b) and the list of
    ``SkippedRow``. A row is corrupted if it holds a byte that cannot be part
    of a number (a NUL or other control byte), a token that is not a number,
    or not exactly 6 values. Blank lines are ignored silently, as pandas does.

    A clean file, the common case, costs one byte scan and one pandas C parse
    (from the path: faster than from a buffer); only a file that fails these
    checks is diagnosed line by line.
    """
    path = Path(path)
    raw = path.read_bytes()
    lines = raw.count(b'\n') + (not raw.endswith(b'\n'))
    if not raw.translate(None, _NUMBER_BYTES + _BLANK_BYTES + b'\n'):
        values = _parse_clean(path)
        if values is not None and len(values) == lines:
            return values, []
    return _read_diagnosed(path, raw)


def _read_clean_room(files):
    """[values [N_f, 6]] of every file when all of them are clean, else None.

    The common case, fast: the files' bytes are checked as in
    `read_annotation` and parsed in one pandas call (per-call costs are
    paid once per room, not once per object); any doubt (a bad byte, a blank
    line, a row count that differs) leaves the room to `read_annotation`.
    """
    texts = [file.read_bytes() for file in files]
    counts = [text.count(b'\n') for text in texts]
    if not all(texts) or any(not text.endswith(b'\n') or
                             text.translate(None, _NUMBER_BYTES + _BLANK_BYTES
                                            + b'\n') for text in texts):
        return None
    values = _parse_clean(io.BytesIO(b''.join(texts)))
    if values is None or len(values) != sum(counts):
        return None
    return np.split(values, np.cumsum(counts)[:-1])


def _read_frame(source, sep=r'\s+'):
    r"""The stock reader, with ``delim_whitespace`` spelled the pandas 3 way
    (sep=r'\s+'); sep=' ' reads files with single spaces ~1.4x faster."""
    with warnings.catch_warnings():  # mixed column types: the caller checks
        warnings.simplefilter('ignore', pd.errors.DtypeWarning)
        return pd.read_csv(source, sep=sep, header=None, engine='c')


def _parse_clean(source):
    """``values [N, 6] float64`` if every row is 6 finite numbers, else None.

    S3DIS separates values by single spaces: that fast parse is tried first,
    any other spacing (tabs, runs of blanks, trailing blanks) is then read as
    the stock reader does."""
    for sep in (' ', r'\s+'):
        if isinstance(source, io.BytesIO):
            source.seek(0)
        try:
            frame = _read_frame(source, sep)
        except (pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        numeric = all(map(pd.api.types.is_numeric_dtype, frame.dtypes))
        if frame.shape[1] != VALUES_PER_ROW or not numeric:
            continue
        values = frame.to_numpy(np.float64)
        if np.isfinite(values).all():
            return values
    return None


def _read_diagnosed(path, raw):
    """Slow path of ``read_annotation``: find the bad lines, parse the others.

    Works on the bytes as an array: ``ends [L]`` are the newline positions,
    line i spans ``data[starts[i]:ends[i] + 1]``.
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    if len(data) == 0:
        return np.zeros((0, VALUES_PER_ROW)), []
    ends = np.flatnonzero(data == ord('\n'))
    if data[-1] != ord('\n'):
        ends = np.append(ends, len(data))
    starts = np.concatenate([[0], ends[:-1] + 1])

    blank = _BLANK[data]
    token_starts = np.flatnonzero(~blank & np.concatenate([[True], blank[:-1]]))
    tokens = np.diff(np.searchsorted(token_starts, ends), prepend=0)
    bad_positions = np.flatnonzero(~_ALLOWED[data])
    bad_lines, first = np.unique(np.searchsorted(ends, bad_positions),
                                 return_index=True)
    bad_bytes = np.zeros(len(ends), dtype=bool)
    bad_bytes[bad_lines] = True

    skipped = {}
    for line, position in zip(bad_lines, bad_positions[first]):
        column = position - starts[line] + 1
        skipped[line] = f'byte {data[position]:#04x} at column {column}'
    wrong_count = ~bad_bytes & (tokens != VALUES_PER_ROW) & (tokens > 0)
    for line in np.flatnonzero(wrong_count):
        skipped[line] = f'{tokens[line]} values instead of {VALUES_PER_ROW}'
    keep = ~bad_bytes & (tokens == VALUES_PER_ROW)

    values, not_numbers = _parse_kept_lines(data, starts, ends, keep)
    for line in not_numbers:
        skipped[line] = 'token that is not a number'
    rows = [SkippedRow(path, int(line) + 1, reason)
            for line, reason in sorted(skipped.items())]
    return values, rows


def _parse_kept_lines(data, starts, ends, keep):
    """Parse the lines in ``keep [L]``, each of 6 tokens made of number bytes.

    Returns ``values [K, 6]`` and the lines whose tokens are still not finite
    numbers ('1.2.3', '-', '1e999'). The rows kept are parsed a second time,
    alone, so that every value comes from the same C parser as in a clean file.
    """
    kept = np.flatnonzero(keep)
    if len(kept) == 0:
        return np.zeros((0, VALUES_PER_ROW)), []
    frame = _read_frame(io.BytesIO(_select_lines(data, starts, ends, keep)))
    numbers = frame.apply(pd.to_numeric, errors='coerce').to_numpy(np.float64)
    bad = ~np.isfinite(numbers).all(axis=1)
    if not bad.any():
        return numbers, []
    keep = keep.copy()
    keep[kept[bad]] = False
    values = None
    if keep.any():
        values = _parse_clean(io.BytesIO(_select_lines(data, starts, ends, keep)))
    return (numbers[~bad] if values is None else values), kept[bad].tolist()


def _select_lines(data, starts, ends, keep):
    """Bytes of the lines in ``keep``."""
    return data[np.repeat(keep, ends - starts + 1)[:len(data)]].tobytes()


def build_room(room):
    """The stock cache content of one room, and what was left out of it.

    Returns ``[pc_label [N, 7], bboxes]`` (None if the room has no valid row),
    the skipped rows and the annotation files without any valid row (left out:
    ``get_min_bbox`` needs points). Files are read in sorted order; the stock
    takes the directory listing order.
    """
    label_of = {name: index for index, name in enumerate(CLASS_NAMES)}
    blocks, bboxes, skipped, left_out = [], [], [], []
    files = sorted((Path(room) / 'Annotations').glob('*.txt'))
    clean = _read_clean_room(files)
    for index, file in enumerate(files):
        if clean is not None:
            values = clean[index]
        else:
            values, bad_rows = read_annotation(file)
            skipped += bad_rows
        if len(values) == 0:
            left_out.append(file)
            continue
        name = class_of(file)
        labels = np.full((len(values), 1), label_of[name], dtype=np.float64)
        blocks.append(np.concatenate([values, labels], axis=1))
        # xyz only: the stock function copies what it is given.
        bboxes.append([name] + get_min_bbox(values[:, :3]))
    content = [np.concatenate(blocks, axis=0), bboxes] if blocks else None
    return content, skipped, left_out


def write_pickle_atomic(obj, path):
    """Pickle ``obj`` to ``path`` so that a reader never sees a partial file."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        pickle.dump(obj, f)


def convert_room(room, out_path):
    """Convert one raw room folder into its pkl; runs in a worker process."""
    content, skipped, left_out = build_room(room)
    if content is None:
        return RoomResult(Path(room), None, 0, skipped, left_out)
    write_pickle_atomic(content, out_path)
    return RoomResult(Path(room), Path(out_path), len(content[0]), skipped,
                      left_out)


def plan_conversion(dataset_path, overwrite=False):
    """Rooms to convert, and pkl files already cached, under ``dataset_path``.

    Raises FileNotFoundError if the path is not a folder, ValueError if it
    holds neither a raw room nor a converted pkl.
    """
    root = Path(dataset_path)
    if not root.is_dir():
        raise FileNotFoundError(f'S3DIS dataset path {str(root)!r} does not '
                                f'exist or is not a folder.')
    rooms = find_rooms(root)
    cached = sorted((root / CACHE_DIR).glob('*.pkl'))
    if not rooms and not cached:
        raise ValueError(
            f'No S3DIS room under {str(root)!r}: expected the raw layout '
            f'Area_N/<room>/Annotations/<class>_<k>.txt (the folder '
            f'Stanford3dDataset_v1.2_Aligned_Version) or converted '
            f'{CACHE_DIR}/*.pkl files.')
    todo = [room for room in rooms
            if overwrite or not cache_path(root, room).exists()]
    redone = {cache_path(root, room) for room in todo}
    return todo, [path for path in cached if path not in redone]


def convert_rooms(dataset_path, rooms, workers=None):
    """Convert ``rooms`` into ``dataset_path/original_pkl``.

    ``workers`` processes (default os.cpu_count()) take the largest rooms
    first, so that the pool does not wait on one big hallway at the end.
    Warnings for skipped rows are logged here, in the calling process.
    Returns one ``RoomResult`` per room, in ``rooms`` order.
    """
    workers = os.cpu_count() if workers is None else workers
    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    (Path(dataset_path) / CACHE_DIR).mkdir(exist_ok=True)
    order = sorted(rooms, key=_room_bytes, reverse=True)
    outputs = [cache_path(dataset_path, room) for room in order]
    progress = dict(total=len(order), desc='S3DIS rooms', unit='room',
                    disable=not order)
    if workers == 1 or len(order) <= 1:
        results = [convert_room(room, out)
                   for room, out in tqdm(zip(order, outputs), **progress)]
    else:
        with ProcessPoolExecutor(min(workers, len(order)),
                                 mp_context=_pool_context()) as pool:
            results = list(tqdm(pool.map(convert_room, order, outputs),
                                **progress))
    for result in results:
        for row in result.skipped:
            log.warning('%s:%d: skipped corrupted row (%s)', row.file,
                        row.line, row.reason)
        for file in result.left_out:
            log.warning('%s: no valid row, file left out', file)
        if result.path is None:
            log.warning('%s: no valid row, no cache file written', result.room)
    by_room = {result.room: result for result in results}
    return [by_room[Path(room)] for room in rooms]


def _room_bytes(room):
    annotations = (Path(room) / 'Annotations').glob('*.txt')
    return sum(file.stat().st_size for file in annotations)


def _pool_context():
    """Fork where available: workers start at once, without re-importing
    open3d or re-running an unguarded ``__main__``; they use numpy and pandas
    only, which are safe to fork."""
    fork = 'fork' in multiprocessing.get_all_start_methods()
    return multiprocessing.get_context('fork' if fork else None)


def convert_s3dis_report(dataset_path, workers=None, overwrite=False):
    """Convert the raw rooms missing from the cache (all with ``overwrite``).

    Returns a ``ConversionReport``; ``workers`` defaults to os.cpu_count().
    """
    todo, cached = plan_conversion(dataset_path, overwrite)
    results = convert_rooms(dataset_path, todo, workers)
    written = [result.path for result in results if result.path is not None]
    skipped = [row for result in results for row in result.skipped]
    if todo:
        log.info('S3DIS %s: %d rooms converted, %d already cached, '
                 '%d corrupted rows skipped', dataset_path, len(written),
                 len(cached), len(skipped))
    return ConversionReport(written, cached, skipped)


def convert_s3dis(dataset_path, workers=None, overwrite=False):
    """Convert the raw rooms missing from ``dataset_path/original_pkl``.

    Returns the paths of the pkl files written.
    """
    return convert_s3dis_report(dataset_path, workers, overwrite).written
