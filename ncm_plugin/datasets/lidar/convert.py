"""LAS/LAZ tiles -> clouds subsampled once to the training grid, cached as
arrays (as the Semantic3D conversion does for text scans).

A tile is streamed in chunks of `chunk_points` points (laspy), recentred on
its origin (las.py), its ASPRS codes mapped to labels, and reduced into the
cells of a `grid_size` grid (grid.GridAccumulator: barycentre, mean
features, majority label per cell). Output, in the conversion folder:

    <tile>.points.npy  [M, 3] float32  barycentres, relative to the origin
    <tile>.feat.npy    [M, F] float32  mean scaled features (meta: names)
    <tile>.labels.npy  [M] uint8       majority label, 0 = ignored
    <tile>.proj.npy    [N] int32       the cell (row) of every point of the
                                       tile, in file order: predictions go
                                       back to every original point
    <tile>.tile.json   source, settings, origin, counts per ASPRS code;
                       written last: a tile is converted once it exists
"""
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..atomic import atomic_path, save_npy_atomic
from ..grid import GridAccumulator, cells_of
from .las import COLOUR, TileReader, class_table, warn_unknown_codes

log = logging.getLogger(__name__)


def output_paths(folder, name):
    folder = Path(folder)
    return {key: folder / f'{name}.{key}.{ext}' for key, ext in
            (('points', 'npy'), ('feat', 'npy'), ('labels', 'npy'),
             ('proj', 'npy'), ('tile', 'json'))}


def source_stamp(path):
    """What identifies a tile's content cheaply: its size and mtime."""
    stat = Path(path).stat()
    return {'source': str(Path(path).resolve()), 'source_bytes': stat.st_size,
            'source_mtime_ns': stat.st_mtime_ns}


def read_meta(folder, name):
    path = output_paths(folder, name)['tile']
    return json.loads(path.read_text()) if path.exists() else None


def converted_meta(path, folder, settings):
    """The meta of this tile in `folder` if it was converted from the same
    file with the same settings, else None."""
    meta = read_meta(folder, Path(path).stem)
    same = meta is not None and meta.get('settings') == \
        settings.conversion_key() and \
        {k: meta.get(k) for k in ('source', 'source_bytes',
                                  'source_mtime_ns')} == source_stamp(path)
    return meta if same else None


def convert_tile(path, folder, settings):
    """Stream one tile into its arrays in `folder`; returns its meta dict."""
    path, folder = Path(path), Path(folder)
    paths = output_paths(folder, path.stem)
    # The tile.json is not removed first: under torchrun every rank may
    # convert the same tile at once, and another rank may be reading it.
    # Each file is replaced atomically, the tile.json last, and the folder
    # is the settings': what a reader finds is this source's conversion.
    reader = TileReader(path, settings.features, settings.colour,
                        settings.feature_scale)
    grid = GridAccumulator(settings.grid_size, settings.num_classes + 1,
                           str(path))
    table = class_table(settings.class_map)
    code_counts = np.zeros(256, dtype=np.int64)
    keys = []
    with tqdm(total=reader.point_count, unit='pt', unit_scale=True,
              desc=path.name, leave=False) as progress:
        for chunk in reader.chunks(settings.chunk_points):
            keys.append(grid.add(np.c_[chunk.points, chunk.features],
                                 table[chunk.codes]))
            code_counts += np.bincount(chunk.codes, minlength=256)
            progress.update(len(chunk.codes))
    result = grid.finish()
    warn_unknown_codes(path, code_counts, settings.class_map)
    features = result.points[:, 3:]
    names = list(reader.feature_names)
    save_npy_atomic(result.points[:, :3], paths['points'])
    save_npy_atomic(features, paths['feat'])
    save_npy_atomic(result.labels, paths['labels'])
    save_npy_atomic(cells_of(np.concatenate(keys), result.keys), paths['proj'])
    colour = names[-3:] == list(COLOUR)
    meta = {**source_stamp(path), 'settings': settings.conversion_key(),
            'origin': reader.origin.tolist(), 'raw_points': reader.point_count,
            'points': len(result.points), 'feature_names': names,
            'colour_values': bool(colour and features[:, -3:].any()),
            'code_counts': {str(code): int(count) for code, count in
                            enumerate(code_counts) if count}}
    with atomic_path(paths['tile']) as tmp:
        tmp.write_text(json.dumps(meta, indent=1) + '\n')
    return meta


def convert_tiles(paths, folder, settings, overwrite=False):
    """Convert every tile of `paths` not yet converted in `folder` (one after
    the other: each is streamed); returns {tile name: meta}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metas = {} if overwrite else {
        Path(p).stem: converted_meta(p, folder, settings) for p in paths}
    todo = [p for p in paths if metas.get(Path(p).stem) is None]
    for path in tqdm(todo, desc='LAS tiles', unit='tile', disable=not todo):
        metas[Path(path).stem] = convert_tile(path, folder, settings)
    if todo:
        log.info('%d LAS/LAZ tiles converted to the %g m grid in %s, %d '
                 'already converted', len(todo), settings.grid_size, folder,
                 len(paths) - len(todo))
    return {Path(p).stem: metas[Path(p).stem] for p in paths}


def conversion_folder(cache_dir, settings):
    """Where a dataset's converted tiles live: one folder per set of
    settings (grid, classes, features), named by the grid and a digest of
    the settings, so that converted tiles and Open3D-ML's preprocessing
    cache (kept below it, see loader.py) never outlive a change of them."""
    key = json.dumps(settings.conversion_key(), sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(os.path.expanduser(str(cache_dir))) / \
        f'las_grid{settings.grid_size:g}_{digest}'
