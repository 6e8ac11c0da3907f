"""One LAS/LAZ tile through a trained KPConv model, in bounded memory.

The tile is streamed twice. First its model-input points (not withheld,
their code not in `keep_codes`) are reduced chunk by chunk into the grid
the model was trained on (the checkpoint's grid size, features and their
scaling; colour only when the model had it), each point's cell key kept in
a memory-mapped file; then the model covers the grid (engine.py), and the
writer streams the tile again into its classified copy, each point taking
its cell's probabilities. What stays in memory is the grid (the size of the
output, not of the input) and one chunk.
"""
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ..datasets.grid import GridAccumulator, cells_of
from ..datasets.lidar.las import COLOUR, LasError, TileReader
from .engine import predict_cloud, projection

log = logging.getLogger(__name__)

# Not model input, their class kept: ASPRS 7 (low noise), 18 (high noise),
# IGN LiDAR HD's 65 (artefacts).
KEEP_CODES = (7, 18, 65)


def open_tile(path, settings):
    """TileReader of `path` with the features the model was trained on (a
    missing one is a LasError naming the file and the feature)."""
    names = list(settings['feature_names'])
    colour = names[-len(COLOUR):] == list(COLOUR)
    features = names[:-len(COLOUR)] if colour else names
    try:
        reader = TileReader(path, features, colour=colour or False,
                            feature_scale=settings.get('feature_scale'))
    except LasError as error:
        raise LasError(f"{error} (the model was trained with the features "
                       f"{names})") from None
    if colour and reader.feature_names[-3:] != COLOUR:
        raise LasError(f"{path}: no colour (red, green, blue), which the "
                       f"model was trained with")
    return reader


def model_input(chunk, keep_codes):
    """[n] bool: the points of a chunk that are model input (not withheld,
    their code not kept)."""
    mask = ~np.isin(chunk.codes, keep_codes)
    if chunk.withheld is not None:
        mask &= ~chunk.withheld
    return mask


def context_tiles(paths, settings):
    """TileReaders (headers read, no point) of the tiles that may lend
    context to others (--buffer), opened once for a run; a tile that cannot
    be opened lends none (its own turn names it)."""
    readers = []
    for path in paths:
        try:
            readers.append(open_tile(path, settings))
        except (LasError, FileNotFoundError):
            continue
    return readers


def add_context(grid, reader, neighbours, buffer, keep_codes, chunk_points):
    """Add to `grid` the model-input points of the `neighbours` (TileReaders
    of other tiles) within `buffer` metres of `reader`'s tile: context for
    its edge points, never written. Returns how many were added."""
    low = np.asarray(reader.header.mins) - buffer
    high = np.asarray(reader.header.maxs) + buffer
    added = 0
    for other in neighbours:
        if np.any(np.asarray(other.header.mins) > high) or \
                np.any(np.asarray(other.header.maxs) < low):
            continue
        shift = other.origin - reader.origin
        try:
            for chunk in other.chunks(chunk_points):
                absolute = chunk.points + other.origin
                inside = model_input(chunk, keep_codes) & np.all(
                    (absolute >= low) & (absolute <= high), axis=1)
                if inside.any():
                    grid.add(np.c_[chunk.points[inside] + shift,
                                   chunk.features[inside]])
                    added += int(inside.sum())
        except LasError as error:  # its own turn fails and says so
            log.warning("%s: context from %s cut short (%s)",
                        reader.path.name, other.path.name, error)
    return added


def tile_cells(reader, grid_size, keep_codes, folder, chunk_points,
               neighbours=(), buffer=0.0):
    """(Grid of the model-input points (and of the neighbours' points within
    `buffer` metres), point_cells [N] int32 memmap in file order: the row of
    each point's cell in the grid, -1 for the points that are not model
    input)."""
    total = reader.point_count
    keys = np.lib.format.open_memmap(Path(folder) / 'keys.npy', mode='w+',
                                     dtype=np.int64, shape=(total,))
    used = np.lib.format.open_memmap(Path(folder) / 'used.npy', mode='w+',
                                     dtype=bool, shape=(total,))
    grid = GridAccumulator(grid_size, None, str(reader.path))
    start = 0
    for chunk in reader.chunks(chunk_points):
        stop = start + len(chunk.codes)
        mask = model_input(chunk, keep_codes)
        used[start:stop] = mask
        if mask.any():
            keys[start:stop][mask] = grid.add(
                np.c_[chunk.points[mask], chunk.features[mask]])
        start = stop
    if not used.any():
        raise LasError(f"{reader.path}: no point to classify (every point is "
                       f"withheld or of a kept code {list(keep_codes)})")
    if buffer > 0 and neighbours:
        added = add_context(grid, reader, neighbours, buffer, keep_codes,
                            chunk_points)
        log.info("%s: %d points of neighbouring tiles within %g m as "
                 "context", reader.path.name, added, buffer)
    result = grid.finish()
    cells = np.lib.format.open_memmap(Path(folder) / 'cells.npy', mode='w+',
                                      dtype=np.int32, shape=(total,))
    for begin in range(0, total, chunk_points):
        end = min(begin + chunk_points, total)
        part = np.full(end - begin, -1, dtype=np.int32)
        mask = used[begin:end]
        part[mask] = cells_of(keys[begin:end][mask], result.keys)
        cells[begin:end] = part
    return result, cells


def classify_tile(trained, source, target, votes=1, seed=0, device='cpu',
                  keep_codes=KEEP_CODES, write_classification=False,
                  probabilities='all', chunk_points=1_000_000, progress=None,
                  work_dir=None, neighbours=(), buffer=0.0, provenance=None,
                  batch_size=None, num_workers=0):
    """Write the classified copy of `source` at `target`; returns the
    writer's report (points, confusion against the file's classes, ...)
    with the figures of the covering. neighbours: `context_tiles` of the
    run, whose points within `buffer` metres of the tile are context (used,
    not written).
    provenance: stored in the output (datasets/lidar/las_output.py's
    read_provenance reads it back)."""
    from ..datasets.lidar.las_output import write_predictions
    from .trained import class_codes
    settings = trained.input_settings['dataset']
    model = trained.model
    reader = open_tile(source, settings)
    clock = time.perf_counter
    started = clock()
    with tempfile.TemporaryDirectory(dir=work_dir,
                                     prefix='ncm_predict_') as folder:
        others = [other for other in neighbours if buffer > 0 and
                  other.path.resolve() != Path(source).resolve()]
        grid, cells = tile_cells(reader, float(settings['grid_size']),
                                 keep_codes, folder, chunk_points, others,
                                 buffer)
        read = clock()
        points, features = grid.points[:, :3], grid.points[:, 3:]
        data = model.preprocess(
            {'point': points, 'feat': features if features.shape[1] else None,
             'label': np.zeros(len(points), dtype=np.int32)},
            {'split': 'test'})
        preprocessed = clock()
        scores = predict_cloud(model, data, votes=votes, seed=seed,
                               device=device, progress=progress,
                               batch_size=batch_size, num_workers=num_workers)
        predicted = clock()
        cell_probabilities = scores.probabilities[
            projection(data, len(points), source)]
        num_classes = cell_probabilities.shape[1]
        report = write_predictions(
            source, target, cells, cell_probabilities,
            class_codes(settings, num_classes), trained.class_names,
            write_classification=write_classification,
            probabilities=probabilities,
            provenance=provenance, chunk_points=chunk_points)
    seconds = {'read_and_grid': read - started,
               'preprocess': preprocessed - read, **scores.seconds,
               'write': clock() - predicted, 'total': clock() - started}
    return {**report, 'grid_cells': len(grid.points), 'seconds': seconds,
            'preprocessed_points': int(len(data['point'])),
            'spheres': scores.spheres, 'votes': votes}
