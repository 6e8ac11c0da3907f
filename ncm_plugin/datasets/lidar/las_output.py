"""Writing a model's predictions into a copy of a LAS/LAZ tile, streamed chunk
by chunk: a tile of 30 million points is never held whole (the memory is that
of one chunk, about 300 bytes a point of it, plus what the caller holds).

The copy keeps every point and every field of the original (standard fields,
extra dimensions, undescribed trailing bytes byte for byte), its header
(version, point format, scales, offsets), its VLRs, EVLRs and CRS, and adds
extra-bytes dimensions:

    PredictedClassification  uint8    ASPRS code of the most probable class
    entropy                  float32  -sum p ln p over the classes, in nats
    <class name>             float32  probabilities='all': one per class, named
                                      in snake_case ('low vegetation' ->
                                      low_vegetation)
    probability              float32  probabilities='predicted': that of the
                                      predicted class only

A point that was not model input (cell -1: noise, withheld points, ...) keeps
its own Classification as PredictedClassification, with entropy and
probabilities 0. `Classification` itself is untouched unless asked for.

Layout of a point in the copy: the standard fields, the input's described
extra dimensions (less those replaced), the new dimensions, then the input's
undescribed trailing bytes. The Extra Bytes VLR describes the extra bytes in
order from the first; bytes after the last described one are undocumented
(IGN LiDAR HD tiles may carry such bytes). Keeping them last keeps them
undocumented, as they were. (Describing them as LAS data type 0 is what laspy
2.7 does when a dimension is added after them, and it cannot read that file
back: "len(scales) (3) is not the same as the number of elements (13)".)

A COPC input gives a plain LAZ: its 'copc' VLR and hierarchy EVLR are
dropped, the point order is the file's.
"""
import copy
import logging
import os
import re
import unicodedata
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..atomic import atomic_path
from .las import CHUNK_POINTS, LasError

log = logging.getLogger(__name__)

PREDICTED_DIMENSION = 'PredictedClassification'
ENTROPY_DIMENSION = 'entropy'
PROBABILITY_DIMENSION = 'probability'  # probabilities='predicted'
PROBABILITY_MODES = ('all', 'predicted', 'none')
PROVENANCE_USER_ID = 'ncm_plugin'
PROVENANCE_RECORD_ID = 1
PROVENANCE_DESCRIPTION = 'ncm-predict settings'
COPC_USER_ID = 'copc'
MAX_NAME_BYTES = 32        # the name field of an Extra Bytes description
MAX_VLR_BYTES = 65535      # the payload of a VLR
FIRST_8BIT_CLASS_FORMAT = 6  # formats 0-5 hold codes 0..31 (5 bits)
SUM_TOLERANCE = 1e-3       # |sum of a cell's probabilities - 1|


class NewDimension(NamedTuple):
    name: str
    dtype: np.dtype
    description: str


def dimension_name(class_name):
    """The extra-bytes name of a class's probability: snake_case ASCII
    ('low vegetation' -> 'low_vegetation', 'Végétation haute' ->
    'vegetation_haute'), at most 32 bytes; a LasError naming the class
    otherwise."""
    ascii_name = unicodedata.normalize('NFKD', str(class_name)).encode(
        'ascii', 'ignore').decode()
    name = re.sub(r'[^0-9a-z]+', '_', ascii_name.lower()).strip('_')
    if not name or len(name) > MAX_NAME_BYTES:
        raise LasError(f"class {class_name!r}: its dimension name {name!r} "
                       f"must be 1 to {MAX_NAME_BYTES} characters of a-z, "
                       f"0-9 and _; rename the class")
    return name


def new_dimensions(class_names, probabilities='all'):
    """The dimensions write_predictions adds, in order (probabilities: 'all',
    'predicted' or 'none')."""
    if probabilities not in PROBABILITY_MODES:
        raise ValueError(f"probabilities={probabilities!r}: choose one of "
                         f"{PROBABILITY_MODES}")
    f32 = np.dtype(np.float32)
    dims = [NewDimension(PREDICTED_DIMENSION, np.dtype(np.uint8),
                         'ASPRS code predicted'),
            NewDimension(ENTROPY_DIMENSION, f32,
                         'entropy of prediction (nats)')]
    if probabilities == 'predicted':
        dims.append(NewDimension(PROBABILITY_DIMENSION, f32,
                                 'probability of prediction'))
    elif probabilities == 'all':
        dims += [NewDimension(dimension_name(c), f32,
                              _fit(f'probability of {c}'))
                 for c in class_names]
    return dims


def _fit(text, size=MAX_NAME_BYTES):
    """text in ASCII, cut to an Extra Bytes description field (32 bytes)."""
    return unicodedata.normalize('NFKD', text).encode(
        'ascii', 'ignore')[:size].decode()


def _check_names(dims, class_names, point_format_id, source):
    """With probabilities='all' (one dimension per class after the writer's
    two): no class dimension may be a standard field of the point format or
    one of the writer's own dimensions, nor two classes share a name."""
    import laspy
    fmt = laspy.PointFormat(point_format_id)
    standard = {n.lower() for n in (*fmt.dimension_names, *fmt.dtype().names,
                                    'x', 'y', 'z')}
    taken = {d.name.lower(): 'the writer' for d in dims[:2]}
    for dim, class_name in zip(dims[2:], class_names):
        key = dim.name.lower()
        if key in standard:
            raise LasError(f"{source}: class {class_name!r} would be a "
                           f"dimension {dim.name!r}, a standard field of "
                           f"point format {point_format_id}; rename the class")
        if key in taken:
            raise LasError(f"{source}: class {class_name!r} would be a "
                           f"dimension {dim.name!r}, already used by "
                           f"{taken[key]}; rename the class")
        taken[key] = f"class {class_name!r}"


def _check_distributions(cell_probabilities, block):
    """A ValueError naming the first row of cell_probabilities [M, C] that is
    not a distribution (finite, >= 0, summing to 1); read `block` rows at a
    time (M may be millions)."""
    for start in range(0, len(cell_probabilities), block):
        p = np.asarray(cell_probabilities[start:start + block], np.float64)
        bad = (~np.isfinite(p).all(1) | (p < 0).any(1)
               | (np.abs(p.sum(1) - 1) > SUM_TOLERANCE))
        if bad.any():
            row = start + int(np.argmax(bad))
            raise ValueError(f"cell_probabilities[{row}] = "
                             f"{cell_probabilities[row]} is not a probability "
                             f"distribution (finite, >= 0, summing to 1)")


def _prediction(p, class_codes):
    """Of probabilities p [n, C] float32: the ASPRS code of the argmax class
    [n] uint8 (the first on a tie), its probability [n] and the entropy
    -sum p ln p [n] in nats (0 ln 0 = 0), float32; temporaries of p's size."""
    best = p.argmax(1)
    top = p[np.arange(len(p)), best]
    plogp = np.log(p, where=p > 0, out=np.zeros_like(p))
    np.multiply(plogp, p, out=plogp)
    entropy = 0.0 - plogp.sum(1, dtype=np.float64)  # 0.0 - : never -0.0
    return class_codes[best], top, entropy.astype(np.float32)


def _is_provenance(vlr):
    return (vlr.user_id == PROVENANCE_USER_ID
            and vlr.record_id == PROVENANCE_RECORD_ID)


def _described_count(header):
    """How many of the header's extra dimensions its Extra Bytes VLR
    describes (laspy appends undescribed trailing bytes as one more,
    'ExtraBytes')."""
    found = header.vlrs.get('ExtraBytesVlr')
    return len(found[0].extra_bytes_structs) if found else 0


def _output_header(header, dims, replaced, provenance):
    """The copy's header: the source's, with the point format of the module
    docstring's layout, the provenance VLR (replacing an older one) and no
    COPC records."""
    import laspy
    from laspy.vlrs.vlrlist import VLRList
    out = copy.deepcopy(header)
    extras = list(header.point_format.extra_dimensions)
    described = _described_count(header)
    undescribed = extras[described:]
    fmt = laspy.PointFormat(header.point_format.id)
    fmt.dimensions += [copy.deepcopy(d) for d in extras[:described]
                       if d.name not in replaced]
    for dim in dims:
        fmt.add_extra_dimension(laspy.ExtraBytesParams(
            dim.name, dim.dtype, dim.description))
    fmt.dimensions += [copy.deepcopy(d) for d in undescribed]
    vlrs = [v for v in header.vlrs if v.user_id != COPC_USER_ID
            and not _is_provenance(v)]
    if provenance is not None:
        vlrs.append(laspy.VLR(PROVENANCE_USER_ID, PROVENANCE_RECORD_ID,
                              PROVENANCE_DESCRIPTION,
                              provenance.encode('utf-8')))
    out.vlrs = vlrs
    out.point_format = fmt  # rebuilds the Extra Bytes VLR from fmt ...
    if undescribed:         # ... which must leave the trailing bytes out
        structs = out.vlrs.get('ExtraBytesVlr')[0].extra_bytes_structs
        del structs[len(structs) - len(undescribed):]
    if header.evlrs is not None:
        out.evlrs = VLRList([v for v in header.evlrs
                             if v.user_id != COPC_USER_ID])
    return out


def _source_records(reader, source, chunk_points):
    """The source's chunks; a LasError naming the file when it is damaged or
    holds fewer points than its header says."""
    expected, read = reader.header.point_count, 0
    try:
        for record in reader.chunk_iterator(chunk_points):
            if len(record) == 0:
                break
            read += len(record)
            yield record
    except Exception as error:  # laspy and lazrs raise several types
        raise LasError(f"{source}: unreadable after {read} of {expected} "
                       f"points ({error}); the file is damaged or cut short; "
                       f"nothing was written") from error
    if read != expected:
        raise LasError(f"{source}: the header announces {expected} points, "
                       f"the file holds {read} (cut short?); nothing was "
                       f"written")


def _check_arguments(point_cells, cell_probabilities, class_codes,
                     class_names, chunk_points):
    class_codes = np.asarray(class_codes)
    c = len(class_codes)
    if class_codes.ndim != 1 or c == 0 or not np.issubdtype(
            class_codes.dtype, np.integer) or \
            class_codes.min() < 0 or class_codes.max() > 255:
        raise ValueError(f"class_codes {class_codes}: one ASPRS code "
                         f"(0..255) per class")
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class_names for {c} "
                         f"class_codes")
    if np.ndim(cell_probabilities) != 2 or \
            np.shape(cell_probabilities)[1] != c:
        raise ValueError(f"cell_probabilities {np.shape(cell_probabilities)}"
                         f": expected [cells, {c}] (one column per class)")
    if np.ndim(point_cells) != 1 or not np.issubdtype(
            np.asarray(point_cells[:0]).dtype, np.integer):
        raise ValueError(f"point_cells {np.shape(point_cells)} "
                         f"{np.asarray(point_cells[:0]).dtype}: expected [N] "
                         f"integers (a cell, or -1)")
    if int(chunk_points) < 1:
        raise ValueError(f"chunk_points={chunk_points}: must be >= 1")
    return class_codes.astype(np.uint8)


def write_predictions(source, target, point_cells, cell_probabilities,
                      class_codes, class_names, *, write_classification=False,
                      probabilities='all', provenance=None,
                      chunk_points=CHUNK_POINTS):
    """Write at `target` (.las or .laz, compressed by suffix) a copy of tile
    `source` with the predictions of the module docstring.

    point_cells [N] integer (a numpy memmap is read chunk by chunk), in file
    order: the row of cell_probabilities of each point, -1 for a point that
    was not model input. cell_probabilities [M, C] float (rows sum to 1);
    class_codes [C]: the ASPRS code of each class; class_names [C] str.
    write_classification: Classification = PredictedClassification (formats
    0-5 hold codes 0..31 only). probabilities: 'all', 'predicted', 'none'.
    provenance: a str stored in a VLR, see read_provenance.

    Input dimensions that bear a new dimension's name (any case) are
    replaced, with one log line. The target appears only once read back and
    checked; on any error nothing is left there (an existing target is
    untouched). Returns {'points': N, 'model_points': points with a cell,
    'confusion': {(code in the file, predicted code): points} over the model
    points, nonzero pairs only, 'replaced_dimensions': [input names]}.
    """
    import laspy
    source, target = Path(source), Path(target)
    class_codes = _check_arguments(point_cells, cell_probabilities,
                                   class_codes, class_names, chunk_points)
    chunk_points = int(chunk_points)
    if target.suffix.lower() not in ('.las', '.laz') or \
            target.name.lower().endswith('.copc.laz'):
        raise LasError(f"{target}: the output must end in .las or .laz "
                       f"(not .copc.laz: the copy is a plain LAZ)")
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such LAS/LAZ file")
    if source.resolve() == target.resolve() or (
            target.exists() and os.path.samefile(source, target)):
        raise LasError(f"{target}: would overwrite the original tile")
    if provenance is not None and \
            len(provenance.encode('utf-8')) > MAX_VLR_BYTES:
        raise ValueError(f"provenance: {len(provenance.encode('utf-8'))} "
                         f"bytes, a VLR holds {MAX_VLR_BYTES}")
    dims = new_dimensions(class_names, probabilities)
    try:
        reader = laspy.open(source)
    except Exception as error:
        raise LasError(f"{source}: not a readable LAS/LAZ file ({error})") \
            from error
    with reader:
        header = reader.header
        n, fmt_id = int(header.point_count), header.point_format.id
        if probabilities == 'all':
            _check_names(dims, class_names, fmt_id, source)
        if len(point_cells) != n:
            raise ValueError(f"{source}: {n} points but {len(point_cells)} "
                             f"point_cells")
        wide = sorted(set(class_codes[class_codes > 31].tolist()))
        if write_classification and fmt_id < FIRST_8BIT_CLASS_FORMAT and wide:
            raise LasError(f"{source}: point format {fmt_id} holds "
                           f"classification codes 0..31, the classes have "
                           f"{wide}; keep write_classification off")
        ours = {d.name.lower() for d in dims}
        described = list(header.point_format.extra_dimensions)[
            :_described_count(header)]
        replaced = [d.name for d in described if d.name.lower() in ours]
        if replaced:
            log.info("%s: replacing the dimensions %s it already has",
                     source, ', '.join(replaced))
        out_header = _output_header(header, dims, set(replaced), provenance)
        _check_distributions(cell_probabilities, chunk_points)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            with laspy.open(tmp, mode='w', header=out_header,
                            do_compress=target.suffix.lower() == '.laz') \
                    as writer:
                confusion, samples = _write_points(
                    writer, _source_records(reader, source, chunk_points),
                    out_header, point_cells, cell_probabilities, class_codes,
                    dims, probabilities, replaced, write_classification)
                if out_header.evlrs:
                    writer.write_evlrs(out_header.evlrs)
            _verify_copy(tmp, target, out_header, dims, samples,
                         replaced, write_classification)
    pairs = np.flatnonzero(confusion)
    return {'points': n, 'model_points': int(confusion.sum()),
            'confusion': {(int(p // 256), int(p % 256)): int(confusion[p])
                          for p in pairs},
            'replaced_dimensions': replaced}


def _write_points(writer, records, out_header, point_cells,
                  cell_probabilities, class_codes, dims, probabilities,
                  replaced, write_classification):
    """Stream the records into writer; returns the confusion counts [65536]
    (file code * 256 + predicted code) and the first and last points
    (source and copy records [1]) for the check."""
    import laspy
    confusion = np.zeros(256 * 256, np.int64)
    m, start, first, last = len(cell_probabilities), 0, None, None
    eight_bit = out_header.point_format.id >= FIRST_8BIT_CLASS_FORMAT
    for record in records:
        stop = start + len(record)
        cells = np.asarray(point_cells[start:stop])
        if cells.size and (cells.min() < -1 or cells.max() >= m):
            raise ValueError(f"point_cells[{start}:{stop}] holds cells "
                             f"{cells.min()}..{cells.max()}, outside -1.."
                             f"{m - 1}")
        out = laspy.ScaleAwarePointRecord.zeros(len(record),
                                                header=out_header)
        for name in record.array.dtype.names:
            if name not in replaced:
                out.array[name] = record.array[name]
        own = np.asarray(record.classification, dtype=np.uint8)
        model = cells >= 0
        p = np.asarray(cell_probabilities[cells[model]], np.float32)
        codes, top, entropy = _prediction(p, class_codes)
        predicted = own.copy()
        predicted[model] = codes
        out.array[PREDICTED_DIMENSION] = predicted
        out.array[ENTROPY_DIMENSION][model] = entropy
        if probabilities == 'all':
            for k, dim in enumerate(dims[2:]):
                out.array[dim.name][model] = p[:, k]
        elif probabilities == 'predicted':
            out.array[PROBABILITY_DIMENSION][model] = top
        if write_classification:
            if eight_bit:
                out.array['classification'] = predicted
            else:  # bits 0-4 the code, 5-7 synthetic, key point, withheld
                raw = out.array['raw_classification']
                out.array['raw_classification'] = (raw & 0xE0) | predicted
        confusion += np.bincount(own[model].astype(np.int64) * 256
                                 + predicted[model], minlength=256 * 256)
        if first is None:
            first = (record.array[:1].copy(), out.array[:1].copy())
        last = (record.array[-1:].copy(), out.array[-1:].copy())
        writer.write_points(out)
        start = stop
    return confusion, (first, last)


def _verify_copy(path, target, out_header, dims, samples, replaced,
                 write_classification):
    """Read the written copy back: point count, version and format, the
    Extra Bytes descriptions of the new dimensions, and the first and last
    points, field by field, against the source and what was meant."""
    import laspy

    def fail(problem):
        return LasError(f"{target}: the written copy does not read back as "
                        f"written ({problem}); nothing was written")
    try:
        with laspy.open(path) as reader:
            got = reader.header
            n = out_header.point_count
            points = [reader.read_points(1).array] if n else []
            if n:
                reader.seek(n - 1)
                points.append(reader.read_points(1).array)
    except Exception as error:
        raise fail(error) from error
    if got.point_count != n:
        raise fail(f"{got.point_count} points, not {n}")
    if (got.version, got.point_format.id, got.point_format.size) != (
            out_header.version, out_header.point_format.id,
            out_header.point_format.size):
        raise fail(f"LAS {got.version} format {got.point_format.id} of "
                   f"{got.point_format.size} bytes")
    found = got.vlrs.get('ExtraBytesVlr')
    described = {s.format_name(): s.dtype() for s in
                 (found[0].extra_bytes_structs if found else [])}
    for dim in dims:
        if described.get(dim.name) != dim.dtype:
            raise fail(f"dimension {dim.name} described as "
                       f"{described.get(dim.name)}, not {dim.dtype}")
    if not n:
        return
    rewritten = set(replaced) | ({'classification', 'raw_classification'}
                                 if write_classification else set())
    for written, (source_point, meant) in zip(points, samples):
        for name in meant.dtype.names:
            if name not in written.dtype.names or \
                    written[name].tobytes() != meant[name].tobytes():
                raise fail(f"field {name} of a point differs")
        for name in source_point.dtype.names:
            if name not in rewritten and \
                    written[name].tobytes() != source_point[name].tobytes():
                raise fail(f"field {name} differs from the source")


def read_provenance(path):
    """The provenance string write_predictions stored in `path`, or None (a
    file it did not write, or written without provenance)."""
    import laspy
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such LAS/LAZ file")
    try:
        with laspy.open(path) as reader:
            vlrs = list(reader.header.vlrs)
    except Exception as error:
        raise LasError(f"{path}: not a readable LAS/LAZ file ({error})") \
            from error
    for vlr in vlrs:
        if _is_provenance(vlr):
            return vlr.record_data_bytes().decode('utf-8')
    return None
