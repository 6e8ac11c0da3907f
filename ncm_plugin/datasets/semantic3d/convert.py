"""Raw Semantic3D text scans -> clouds subsampled once to the training grid, cached as arrays.

Raw layout (the official download, unpacked): ``RAW/<scan>.txt``, one point per
line ``x y z intensity r g b``, and for training scans ``RAW/<scan>.labels``,
one integer per line (0 unlabeled, 1..8 the classes), same line count. A scan
holds up to ~500 million points (tens of GB of text), so it is streamed in
chunks of ``chunk_rows`` lines with the pandas C parser and reduced on the fly
into the cells of a ``grid_size`` grid (``grid.GridAccumulator``: barycentre
of the points, mean of intensity and colour, majority label, per cell), in
memory the size of the output, whatever the size of the text.

Output, in OUT:

    <scan>.points.npy  [M, 7] float32  x y z intensity r g b, one row per occupied cell
    <scan>.labels.npy  [M] uint8       majority label (training scans)
    <scan>.proj.npy    [N] int32       for test scans: the cell (row of points.npy) of every
                                       raw line, in the original order, to write the
                                       submission (one label per raw point)
    <scan>.grid.json                   grid size, raw and cell counts, source; written last:
                                       a scan is converted once its grid.json exists

Bad input: a ``.labels`` file whose line count differs from its ``.txt`` and a
row with more than 7 values are errors naming the file (and line). A row of a
training scan with a value that is not a number, or fewer than 7 values, is
skipped with a warning naming file and line (its label goes with it); in a test
scan it is an error, because the submission needs a label for every line. A
label that is not a number becomes 0 (unlabeled) with a warning; an integer
label outside 0..8 is an error.
"""
import csv
import json
import logging
import tempfile
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..atomic import atomic_path, save_npy_atomic
from ..grid import GridAccumulator, cells_of

log = logging.getLogger(__name__)

COLUMNS = 7  # x y z intensity r g b
NUM_LABELS = 9  # 0 = unlabeled, 1..8 the classes
CHUNK_ROWS = 1_000_000
MAX_WARNINGS = 20  # bad rows warned about one by one, per file
MAX_BAD_ROWS = 10_000  # more in one file: it is not a Semantic3D file, stop


class ScanFiles(NamedTuple):
    name: str
    points: Path  # <scan>.txt
    labels: Path | None  # <scan>.labels, None for test scans


class BadRow(NamedTuple):
    """A raw line that was skipped (points) or unlabeled (labels); ``line`` is 1-based."""
    file: Path
    line: int
    reason: str


class Chunk(NamedTuple):
    values: np.ndarray  # [n, 7] float64
    labels: np.ndarray | None  # [n] uint8
    position: int  # bytes of the .txt consumed so far (for progress)


class ConversionReport(NamedTuple):
    written: list  # scan names
    cached: list
    bad_rows: list  # BadRow


# -- raw files ----------------------------------------------------------------
def find_raw_scans(raw):
    """Scans of a raw folder, by name: every ``*.txt``, labelled if a ``.labels`` is next to it."""
    raw = Path(raw)
    if not raw.is_dir():
        raise FileNotFoundError(f'Semantic3D raw folder {str(raw)!r} does not exist')
    scans = [ScanFiles(p.stem, p, p.with_suffix('.labels') if p.with_suffix('.labels').exists()
                       else None) for p in sorted(raw.glob('*.txt'))]
    if not scans:
        raise FileNotFoundError(f'{raw}: no <scan>.txt file (unpack the .7z archives of the '
                                f'Semantic3D download into this folder)')
    return scans


def count_rows(path, block=1 << 24):
    """Lines of a text file, not counting blank lines at its end (what pandas parses as rows)."""
    newlines = 0
    with open(path, 'rb') as f:
        while data := f.read(block):
            newlines += data.count(b'\n')
        end, trailing = f.tell(), 0  # trailing: newlines after the last non-blank byte
        while end > 0:
            start = max(0, end - (1 << 16))
            f.seek(start)
            data = f.read(end - start)
            content = len(data.rstrip())
            if content:
                return newlines - trailing - data.count(b'\n', content) + 1
            trailing, end = trailing + data.count(b'\n'), start
    return 0


def check_same_length(scan):
    """Rows of the scan; raises ValueError naming both files when the label count differs."""
    rows = count_rows(scan.points)
    if scan.labels is not None:
        labels = count_rows(scan.labels)
        if labels != rows:
            raise ValueError(f'{scan.labels} has {labels} lines but {scan.points} has {rows}: '
                             f'every point needs exactly one label')
    return rows


def _frames(path, handle, columns, chunk_rows):
    """Chunks of ``chunk_rows`` rows of whitespace-separated columns (pandas C parser; this is
    'delim_whitespace' of pandas < 3). Blank lines stay rows, so that line i of the .txt
    stays row i of the .labels; a row with too many values is a ValueError naming the file."""
    reader = pd.read_csv(handle, sep=r'\s+', header=None, names=range(columns),
                         skip_blank_lines=False, quoting=csv.QUOTE_NONE, chunksize=chunk_rows,
                         engine='c')
    try:
        yield from reader
    except pd.errors.ParserError as error:
        raise ValueError(f'{path}: {error} (more than {columns} values on a line)') from None


def _numeric(frame):
    """[n, c] float64 of a parsed chunk; a token that is not a number becomes NaN."""
    if all(pd.api.types.is_numeric_dtype(t) for t in frame.dtypes):
        return frame.to_numpy(np.float64)
    return frame.apply(pd.to_numeric, errors='coerce').to_numpy(np.float64)


def read_chunks(scan, rows, chunk_rows=CHUNK_ROWS, bad_rows=None):
    """Yield ``Chunk``s of the scan's first ``rows`` rows (``check_same_length``), bad rows
    handled as the module says; skipped and unlabeled lines are appended to ``bad_rows``."""
    bad_rows = [] if bad_rows is None else bad_rows
    with ExitStack() as stack, warnings.catch_warnings():
        warnings.simplefilter('ignore', pd.errors.DtypeWarning)
        points_file = stack.enter_context(open(scan.points, 'rb'))
        readers = [_frames(scan.points, points_file, COLUMNS, chunk_rows)]
        if scan.labels is not None:
            labels_file = stack.enter_context(open(scan.labels, 'rb'))
            readers.append(_frames(scan.labels, labels_file, 1, chunk_rows))
        start = 0
        for frames in zip(*readers):
            if start >= rows:
                break
            values = _numeric(frames[0])[:rows - start]
            labels = None
            if scan.labels is not None:
                labels = _labels(scan.labels, _numeric(frames[1])[:rows - start, 0], start,
                                 bad_rows)
            values, labels = _drop_bad_points(scan, values, labels, start, bad_rows)
            if len(bad_rows) > MAX_BAD_ROWS:
                raise ValueError(f'{bad_rows[-1].file}: more than {MAX_BAD_ROWS} bad rows '
                                 f'(first at line {bad_rows[0].line}): not a Semantic3D file?')
            start += len(frames[0])
            yield Chunk(values, labels, points_file.tell())


def _labels(path, column, start, bad_rows):
    """[n] uint8 labels; NaN (not a number) -> 0 with a BadRow, out of 0..8 -> ValueError."""
    invalid = ~np.isfinite(column) | (column != np.round(column))
    for i in np.flatnonzero(invalid):
        bad_rows.append(BadRow(path, start + int(i) + 1, 'label is not an integer, set to 0'))
    column = np.where(invalid, 0, column)
    out = (column < 0) | (column >= NUM_LABELS)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ValueError(f'{path}:{start + i + 1}: label {column[i]:g} is not in 0..'
                         f'{NUM_LABELS - 1} (is this a Semantic3D reduced-8/semantic-8 file?)')
    return column.astype(np.uint8)


def _drop_bad_points(scan, values, labels, start, bad_rows):
    """Rows with 7 finite numbers; the others are BadRows (training) or a ValueError (test)."""
    bad = ~np.isfinite(values).all(axis=1)
    if not bad.any():
        return values, labels
    lines = start + np.flatnonzero(bad) + 1
    if scan.labels is None:
        raise ValueError(f'{scan.points}:{lines[0]}: not 7 numbers ({bad.sum()} such rows in '
                         f'this chunk); a test scan needs every row for its submission')
    bad_rows += [BadRow(scan.points, int(line), 'not 7 numbers, row skipped') for line in lines]
    return values[~bad], None if labels is None else labels[~bad]


# -- one scan -----------------------------------------------------------------
def output_paths(out, name):
    out = Path(out)
    return {key: out / f'{name}.{key}.{ext}' for key, ext in
            (('points', 'npy'), ('labels', 'npy'), ('proj', 'npy'), ('grid', 'json'))}


def is_converted(scan, out, grid_size):
    """True if ``out`` holds this scan converted from the same source at the same grid."""
    meta_path = output_paths(out, scan.name)['grid']
    if not meta_path.exists():
        return False
    meta = json.loads(meta_path.read_text())
    return (meta.get('grid_size') == grid_size and
            meta.get('source_bytes') == scan.points.stat().st_size and
            meta.get('labelled') == (scan.labels is not None))


def convert_scan(scan, out, grid_size, chunk_rows=CHUNK_ROWS):
    """Stream one raw scan into its grid arrays in ``out``; returns its BadRows."""
    rows = check_same_length(scan)
    labelled = scan.labels is not None
    paths = output_paths(out, scan.name)
    paths['grid'].unlink(missing_ok=True)  # not converted until its grid.json is back
    grid = GridAccumulator(grid_size, NUM_LABELS if labelled else None, str(scan.points))
    bad_rows = []
    with ExitStack() as stack:
        keys_file = None
        if not labelled:  # cell key of every raw line, on disk: N can be 10^8
            keys_dir = stack.enter_context(tempfile.TemporaryDirectory(dir=out))
            keys_path = Path(keys_dir) / 'keys.bin'
            keys_file = stack.enter_context(open(keys_path, 'wb'))
        progress = stack.enter_context(tqdm(total=scan.points.stat().st_size, unit='B',
                                            unit_scale=True, desc=scan.name, leave=False))
        for chunk in read_chunks(scan, rows, chunk_rows, bad_rows):
            keys = grid.add(chunk.values, chunk.labels)
            if keys_file is not None:
                keys_file.write(keys.tobytes())
            progress.update(chunk.position - progress.n)
        result = grid.finish()
        save_npy_atomic(result.points, paths['points'])
        if labelled:
            save_npy_atomic(result.labels, paths['labels'])
        else:
            keys_file.close()
            _write_projection(keys_path, result.keys, rows, paths['proj'], chunk_rows)
    _log_bad_rows(bad_rows)
    meta = {'source': str(scan.points), 'source_bytes': scan.points.stat().st_size,
            'labelled': labelled, 'grid_size': grid_size, 'raw_points': rows,
            'skipped_rows': sum(b.file == scan.points for b in bad_rows),
            'points': len(result.points)}
    with atomic_path(paths['grid']) as tmp:
        tmp.write_text(json.dumps(meta, indent=1) + '\n')
    return bad_rows


def _write_projection(keys_path, cells, rows, path, chunk_rows):
    """``path`` = [rows] int32 row of ``cells`` of every raw line, streamed from ``keys_path``."""
    keys = np.memmap(keys_path, dtype=np.int64, mode='r')
    if len(keys) != rows:
        raise AssertionError(f'{len(keys)} keys for {rows} rows')
    with atomic_path(path) as tmp:
        proj = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.int32, shape=(rows,))
        for start in range(0, rows, chunk_rows):
            proj[start:start + chunk_rows] = cells_of(keys[start:start + chunk_rows], cells)
        proj.flush()
        del proj
    del keys


def _log_bad_rows(bad_rows):
    by_file = {}
    for row in bad_rows:
        by_file.setdefault(row.file, []).append(row)
    for file, rows in by_file.items():
        for row in rows[:MAX_WARNINGS]:
            log.warning('%s:%d: %s', row.file, row.line, row.reason)
        if len(rows) > MAX_WARNINGS:
            log.warning('%s: %d more such rows', file, len(rows) - MAX_WARNINGS)


# -- label files --------------------------------------------------------------
def write_label_lines(path, labels, index=None, chunk_rows=CHUNK_ROWS):
    """Write ``labels [N]`` (single digits 0..8), one per line: a ``.labels`` file or a
    benchmark submission. With ``index [R]`` (e.g. a memory-mapped proj.npy), write
    ``labels[index]`` instead, streamed, so that R can be 10^8."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f'{path}: labels must be single digits, got '
                         f'{labels.min()}..{labels.max()}')
    rows = len(labels) if index is None else len(index)
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        for start in range(0, rows, chunk_rows):
            part = labels[start:start + chunk_rows] if index is None else \
                labels[np.asarray(index[start:start + chunk_rows])]
            line = np.empty((len(part), 2), dtype=np.uint8)
            line[:, 0], line[:, 1] = part + ord('0'), ord('\n')
            f.write(line.tobytes())


# -- a folder -----------------------------------------------------------------
def convert_semantic3d(raw, out, grid_size=0.06, chunk_rows=CHUNK_ROWS, overwrite=False):
    """Convert every raw scan of ``raw`` not yet converted in ``out`` at ``grid_size``.

    Scans are converted one after the other (each is streamed; running several
    at once would multiply the memory). Returns a ConversionReport.
    """
    if grid_size <= 0:
        raise ValueError(f'grid_size must be > 0, got {grid_size}')
    scans = find_raw_scans(raw)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in scans if overwrite or not is_converted(s, out, grid_size)]
    cached = [s.name for s in scans if s not in todo]
    bad_rows = []
    for scan in tqdm(todo, desc='Semantic3D scans', unit='scan', disable=not todo):
        bad_rows += convert_scan(scan, out, grid_size, chunk_rows)
    log.info('Semantic3D %s -> %s at grid %g m: %d scans converted, %d already converted, '
             '%d bad rows', raw, out, grid_size, len(todo), len(cached), len(bad_rows))
    return ConversionReport([s.name for s in todo], cached, bad_rows)


def read_raw_scan(scan, chunk_rows=CHUNK_ROWS):
    """Whole raw scan at full resolution: ``values [N, 7] float32`` and ``labels [N] uint8``
    (None for test scans); for small files, the converted cache is the way for real ones."""
    rows = check_same_length(scan)
    bad_rows = []
    chunks = list(read_chunks(scan, rows, chunk_rows, bad_rows))
    _log_bad_rows(bad_rows)
    values = np.concatenate([c.values for c in chunks]).astype(np.float32)
    labels = np.concatenate([c.labels for c in chunks]) if scan.labels is not None else None
    return values, labels

