"""The streamed copy of a tile with predictions: every point and field of the
original as laspy reads it, the new dimensions as computed here from the
cells' rows, and bad inputs refused with nothing left behind."""
import logging
import shutil
from pathlib import Path

import laspy
import numpy as np
import pytest
from laspy.vlrs.known import WktCoordinateSystemVlr
from laspy.vlrs.vlrlist import VLRList

from ncm_plugin.datasets.lidar.las import LasError
from ncm_plugin.datasets.lidar.las_output import (read_provenance,
                                                  write_predictions)

TILE = Path(__file__).parent / 'data' / 'ign_lidarhd' / \
    'test_data_77050_627760_LA93_IGN69.laz'
CLASS_NAMES = ('ground', 'low vegetation', 'medium vegetation',
               'high vegetation', 'building')
CLASS_CODES = (2, 3, 4, 5, 6)
CLASS_DIMS = ('ground', 'low_vegetation', 'medium_vegetation',
              'high_vegetation', 'building')
NEW_DIMS = ('PredictedClassification', 'entropy') + CLASS_DIMS
WKT = 'PROJCS["RGF93 v1 / Lambert-93",AUTHORITY["EPSG","2154"]]'


def make_tile(path, version='1.4', point_format=8, n=1000, described=(),
              undescribed=0, crs=True, evlr=False, rgb_max=None, seed=0):
    """A tile written by laspy with random bytes in every field, extra
    dimensions `described` [(name, laspy type)] and `undescribed` trailing
    bytes that no Extra Bytes VLR describes (as in some IGN LiDAR HD tiles)."""
    fmt = laspy.PointFormat(point_format)
    for name, kind in described:
        fmt.add_extra_dimension(laspy.ExtraBytesParams(
            name, kind, description=f'{name} of another tool'))
    if undescribed:
        fmt.add_extra_dimension(laspy.ExtraBytesParams(
            'trailing', f'{undescribed}u1'))
    header = laspy.LasHeader(version=version, point_format=fmt)
    if undescribed:  # drop its description: the bytes stay, undescribed
        structs = header.vlrs.get('ExtraBytesVlr')[0].extra_bytes_structs
        structs.pop()
        if not structs:
            header.vlrs.extract('ExtraBytesVlr')
    header.scales = [0.01, 0.01, 0.001]
    header.offsets = [700000.0, 6600000.0, 0.0]
    header.system_identifier = 'test scanner'
    header.vlrs.append(laspy.VLR('test_tool', 42, 'a vlr of another tool',
                                 b'payload \x00\xff'))
    if crs:
        header.vlrs.append(WktCoordinateSystemVlr(WKT))
        header.global_encoding.wkt = version == '1.4'
    rng = np.random.default_rng(seed)
    points = laspy.ScaleAwarePointRecord.zeros(n, header=header)
    raw = rng.integers(0, 256, n * fmt.size, dtype=np.uint8)
    points.array[:] = np.frombuffer(raw.tobytes(), dtype=points.array.dtype)
    if 'gps_time' in points.array.dtype.names:  # no NaN among random bytes
        points.array['gps_time'] = rng.uniform(0, 1e9, n)
    for name, kind in described:
        if np.dtype(kind.replace('3', '')).kind == 'f':
            points.array[name] = rng.random(points.array[name].shape)
    if rgb_max is not None:
        for colour in ('red', 'green', 'blue'):
            points.array[colour] = rng.integers(0, rgb_max + 1, n)
    with laspy.open(path, mode='w', header=header,
                    do_compress=path.suffix == '.laz') as writer:
        writer.write_points(points)
        if evlr:
            writer.write_evlrs(VLRList([laspy.VLR(
                'test_tool', 7, 'an evlr of another tool', b'e' * 300)]))
    return path


def predictions(n, cells=None, num_classes=5, unused=0.1, seed=1):
    """point_cells [n] int32 (-1 for `unused` of the points) and
    cell_probabilities [n // 4, C] float32, rows summing to 1."""
    rng = np.random.default_rng(seed)
    m = max(n // 4, 1)
    cells = rng.integers(0, m, n).astype(np.int32)
    cells[rng.random(n) < unused] = -1
    p = rng.random((m, num_classes)).astype(np.float32) + 1e-3
    return cells, p / p.sum(1, keepdims=True)


def predict(source, target, cells, p, **options):
    options.setdefault('chunk_points', 97)  # many chunks, a short last one
    return write_predictions(source, target, cells, p, CLASS_CODES,
                             CLASS_NAMES, **options)


def assert_same_points(original, written, skip=()):
    """Every field of the original's points, raw and as laspy names it."""
    for name in original.points.array.dtype.names:
        if name not in skip:
            assert written.points.array[name].tobytes() == \
                original.points.array[name].tobytes(), name
    for name in original.point_format.dimension_names:
        if name not in skip:
            np.testing.assert_array_equal(np.asarray(written[name]),
                                          np.asarray(original[name]), name)


def vlr_records(header, own=('ExtraBytesVlr',)):
    return [(v.user_id, v.record_id, v.description, v.record_data_bytes())
            for v in header.vlrs if type(v).__name__ not in own
            and v.user_id != 'ncm_plugin']


def extra_bytes(header):
    found = header.vlrs.get('ExtraBytesVlr')
    return [(s.format_name(), s.data_type, s.description)
            for s in (found[0].extra_bytes_structs if found else [])]


@pytest.mark.parametrize('version, point_format, layout', [
    ('1.2', 1, {}),
    ('1.2', 3, {}),
    ('1.2', 3, {'rgb_max': 255}),  # 8-bit colour in the 16-bit fields
    ('1.4', 6, {'evlr': True}),
    ('1.4', 8, {}),
    ('1.4', 8, {'described': [('Deviation', 'u2'), ('height', 'i4'),
                              ('normal', '3f4')]}),
    ('1.4', 8, {'undescribed': 13}),
    ('1.4', 8, {'described': [('Deviation', 'u2')], 'undescribed': 13}),
])
@pytest.mark.parametrize('suffix', ['.laz', '.las'])
def test_every_point_field_header_and_vlr_of_the_source_is_kept(
        tmp_path, version, point_format, layout, suffix):
    source = make_tile(tmp_path / f'in{suffix}', version, point_format,
                       **layout)
    before = source.read_bytes()
    cells, p = predictions(1000)
    target = tmp_path / 'out' / f'tile{suffix}'
    result = predict(source, target, cells, p)
    assert source.read_bytes() == before
    original, written = laspy.read(source), laspy.read(target)
    assert_same_points(original, written)
    head, out = original.header, written.header
    assert (out.version, out.point_format.id, out.point_count) == \
        (head.version, head.point_format.id, 1000)
    np.testing.assert_array_equal(out.scales, head.scales)
    np.testing.assert_array_equal(out.offsets, head.offsets)
    np.testing.assert_array_equal(out.mins, head.mins)
    np.testing.assert_array_equal(out.maxs, head.maxs)
    assert out.system_identifier == 'test scanner'
    assert out.global_encoding.value == head.global_encoding.value
    assert out.are_points_compressed == (suffix == '.laz')
    assert vlr_records(out) == vlr_records(head)
    if layout.get('evlr'):
        assert [(v.user_id, v.record_id, v.record_data_bytes())
                for v in out.evlrs] == [('test_tool', 7, b'e' * 300)]
    # The input's descriptions first, then the new ones; undescribed trailing
    # bytes stay last and undescribed.
    assert extra_bytes(out)[:len(extra_bytes(head))] == extra_bytes(head)
    assert [name for name, _, _ in extra_bytes(out)][
        len(extra_bytes(head)):] == list(NEW_DIMS)
    if layout.get('undescribed'):  # IGN's shape, in and out
        for header, data in ((head, original), (out, written)):
            assert 'ExtraBytes' not in [n for n, _, _ in extra_bytes(header)]
            assert list(data.point_format.extra_dimension_names)[-1] == \
                'ExtraBytes'
            assert data.point_format['ExtraBytes'].num_elements == 13
    assert out.point_format.size == head.point_format.size + 1 + 4 * 6
    assert written['PredictedClassification'].dtype == np.uint8
    for name in NEW_DIMS[1:]:
        assert written[name].dtype == np.float32
    assert result['points'] == 1000
    assert result['model_points'] == int((cells >= 0).sum())
    assert result['replaced_dimensions'] == []


def test_the_new_dimensions_are_the_cells_predictions(tmp_path):
    source = make_tile(tmp_path / 'in.laz')
    cells, p = predictions(1000)
    path = tmp_path / 'cells.npy'
    np.save(path, cells)
    predict(source, tmp_path / 'out.laz', np.load(path, mmap_mode='r'), p)
    original, written = laspy.read(source), laspy.read(tmp_path / 'out.laz')
    model = cells >= 0
    probabilities = np.stack([written[d] for d in CLASS_DIMS], axis=1)
    np.testing.assert_array_equal(probabilities[model], p[cells[model]])
    np.testing.assert_allclose(probabilities[model].sum(1), 1, atol=1e-5)
    rows = p[cells[model]].astype(np.float64)
    np.testing.assert_allclose(written['entropy'][model],
                               -(rows * np.log(rows)).sum(1), rtol=1e-5)
    np.testing.assert_array_equal(
        written['PredictedClassification'][model],
        np.array(CLASS_CODES)[rows.argmax(1)])
    # Points that were not model input: their own code, probabilities 0.
    assert (~model).sum() > 50
    np.testing.assert_array_equal(written['PredictedClassification'][~model],
                                  original.classification[~model])
    assert not probabilities[~model].any()
    assert not written['entropy'][~model].any()


def test_a_certain_cell_has_entropy_zero(tmp_path):
    source = make_tile(tmp_path / 'in.las', n=10)
    p = np.eye(5, dtype=np.float32)
    predict(source, tmp_path / 'out.las', np.arange(10) % 5, p)
    written = laspy.read(tmp_path / 'out.las')
    assert written['entropy'].tolist() == [0.0] * 10
    assert written['PredictedClassification'].tolist() == [2, 3, 4, 5, 6] * 2


@pytest.mark.parametrize('mode, dims', [
    ('predicted', ('PredictedClassification', 'entropy', 'probability')),
    ('none', ('PredictedClassification', 'entropy')),
])
def test_fewer_probabilities_on_request(tmp_path, mode, dims):
    source = make_tile(tmp_path / 'in.laz')
    cells, p = predictions(1000)
    predict(source, tmp_path / 'out.laz', cells, p, probabilities=mode)
    written = laspy.read(tmp_path / 'out.laz')
    assert tuple(written.point_format.extra_dimension_names) == dims
    if mode == 'predicted':
        model = cells >= 0
        np.testing.assert_array_equal(written['probability'][model],
                                      p[cells[model]].max(1))
        assert not written['probability'][~model].any()


@pytest.mark.parametrize('version, point_format', [('1.2', 1), ('1.4', 6)])
def test_classification_is_untouched_unless_asked(tmp_path, version,
                                                  point_format):
    source = make_tile(tmp_path / 'in.laz', version, point_format)
    original = laspy.read(source)
    cells, p = predictions(1000)
    predict(source, tmp_path / 'kept.laz', cells, p)
    kept = laspy.read(tmp_path / 'kept.laz')
    np.testing.assert_array_equal(kept.classification, original.classification)
    predict(source, tmp_path / 'set.laz', cells, p, write_classification=True)
    replaced = laspy.read(tmp_path / 'set.laz')
    np.testing.assert_array_equal(replaced.classification,
                                  kept['PredictedClassification'])
    # The rest (in formats 0-5: the flags beside the code) is as it was.
    assert_same_points(original, replaced,
                       skip=('classification', 'raw_classification'))


def test_user_codes_64_to_255_are_predicted_and_written(tmp_path):
    source = make_tile(tmp_path / 'in.laz', '1.4', 6)
    p = np.eye(3, dtype=np.float32)
    result = write_predictions(source, tmp_path / 'out.laz',
                               np.arange(1000) % 3, p, [64, 200, 255],
                               ['bridge deck', 'pylon', 'artefact'],
                               write_classification=True)
    written = laspy.read(tmp_path / 'out.laz')
    assert written.classification.tolist() == [64, 200, 255] * 333 + [64]
    assert list(written.point_format.extra_dimension_names)[2:] == \
        ['bridge_deck', 'pylon', 'artefact']
    assert sum(result['confusion'].values()) == 1000
    assert {pred for _, pred in result['confusion']} == {64, 200, 255}


def test_codes_above_31_cannot_replace_a_5_bit_classification(tmp_path):
    source = make_tile(tmp_path / 'in.laz', '1.2', 3)
    with pytest.raises(LasError, match=r'point format 3 holds classification '
                                       r'codes 0\.\.31.*\[64\]'):
        write_predictions(source, tmp_path / 'out.laz', np.zeros(1000, int),
                          np.ones((1, 1), np.float32), [64], ['bridge'],
                          write_classification=True)
    assert not (tmp_path / 'out.laz').exists()


def test_dimensions_already_there_are_replaced_not_duplicated(tmp_path,
                                                             caplog):
    # 'entropy' of another tool, in float64; then a second prediction.
    source = make_tile(tmp_path / 'in.laz',
                       described=[('Deviation', 'u2'), ('entropy', 'f8')])
    cells, p = predictions(1000)
    first = predict(source, tmp_path / 'first.laz', cells, p)
    assert first['replaced_dimensions'] == ['entropy']
    cells2, p2 = predictions(1000, seed=2)
    with caplog.at_level(logging.INFO):
        second = predict(tmp_path / 'first.laz', tmp_path / 'second.laz',
                         cells2, p2)
    assert second['replaced_dimensions'] == list(NEW_DIMS)
    assert caplog.text.count('replacing the dimensions') == 1
    written = laspy.read(tmp_path / 'second.laz')
    assert list(written.point_format.extra_dimension_names) == \
        ['Deviation'] + list(NEW_DIMS)
    assert written['entropy'].dtype == np.float32
    model = cells2 >= 0
    np.testing.assert_array_equal(written['ground'][model],
                                  p2[cells2[model], 0])
    assert not written['entropy'][~model].any()  # not the first's values
    np.testing.assert_array_equal(written['Deviation'],
                                  laspy.read(source)['Deviation'])


@pytest.mark.parametrize('name', ['intensity', 'Classification', 'X',
                                  'gps time', 'entropy'])
def test_a_class_named_like_a_field_is_refused(tmp_path, name):
    source = make_tile(tmp_path / 'in.laz')
    target = tmp_path / 'out.laz'
    with pytest.raises(LasError, match=f"class '{name}'"):
        write_predictions(source, target, np.zeros(1000, int),
                          np.full((1, 2), 0.5, np.float32), [2, 3],
                          ['ground', name])
    assert list(tmp_path.iterdir()) == [source]


def test_a_real_ign_tile(tmp_path):
    source = tmp_path / TILE.name
    shutil.copy(TILE, source)
    original = laspy.read(source)
    # Cells of a 1 m grid; IGN's code 64 (structures) is not model input.
    keys = np.floor(np.stack([original.x, original.y, original.z], 1))
    _, cells = np.unique(keys, axis=0, return_inverse=True)
    cells = cells.ravel().astype(np.int32)
    cells[original.classification == 64] = -1
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(5), cells.max() + 1).astype(np.float32)
    result = predict(source, tmp_path / 'out.laz', cells, p,
                     provenance='{"checkpoint": "ckpt_0042.pth"}',
                     chunk_points=20_000)
    written = laspy.read(tmp_path / 'out.laz')
    assert_same_points(original, written)
    head, out = original.header, written.header
    assert (out.version, out.point_format.id) == (head.version, 8)
    np.testing.assert_array_equal(out.scales, head.scales)
    np.testing.assert_array_equal(out.offsets, head.offsets)
    assert vlr_records(written.header) == vlr_records(original.header,
                                                      own=('LasZipVlr',))
    assert written.header.vlrs.get('WktCoordinateSystemVlr')[0].string == \
        original.header.vlrs.get('WktCoordinateSystemVlr')[0].string
    model = cells >= 0
    predicted = np.array(CLASS_CODES)[p[cells[model]].argmax(1)]
    pairs, counts = np.unique(np.stack(
        [original.classification[model], predicted], 1), axis=0,
        return_counts=True)
    assert result['confusion'] == {(int(a), int(b)): int(c)
                                   for (a, b), c in zip(pairs, counts)}
    assert result['model_points'] == 56035 - 70
    assert read_provenance(tmp_path / 'out.laz') == \
        '{"checkpoint": "ckpt_0042.pth"}'
    assert read_provenance(source) is None


def test_provenance_is_replaced_and_a_copy_without_has_none(tmp_path):
    source = make_tile(tmp_path / 'in.laz')
    cells, p = predictions(1000)
    predict(source, tmp_path / 'a.laz', cells, p, provenance='{"run": 1}')
    predict(tmp_path / 'a.laz', tmp_path / 'b.laz', cells, p,
            provenance='{"run": 2}')
    predict(tmp_path / 'a.laz', tmp_path / 'c.laz', cells, p)
    assert read_provenance(tmp_path / 'b.laz') == '{"run": 2}'
    assert read_provenance(tmp_path / 'c.laz') is None
    assert [v.user_id for v in laspy.read(tmp_path / 'b.laz').header.vlrs
            ].count('ncm_plugin') == 1


@pytest.mark.parametrize('suffix, message', [
    ('.laz', r'unreadable after \d+ of 1000 points'),
    ('.las', 'the header announces 1000 points, the file holds 800'),
])
def test_a_cut_short_source_is_named_and_leaves_nothing(tmp_path, suffix,
                                                        message):
    whole = make_tile(tmp_path / f'whole{suffix}')
    source = tmp_path / f'cut{suffix}'
    data = whole.read_bytes()
    size = laspy.read(whole).point_format.size
    source.write_bytes(data[:-200 * size] if suffix == '.las' else
                       data[:len(data) // 2])
    target = tmp_path / 'out' / 'cut.laz'
    target.parent.mkdir()
    target.write_bytes(b'an older output')
    cells, p = predictions(1000)
    with pytest.raises(LasError, match=f'{source}: {message}'):
        predict(source, target, cells, p)
    assert target.read_bytes() == b'an older output'
    assert list(target.parent.iterdir()) == [target]  # no temporary file


def test_a_copy_that_does_not_read_back_as_written_is_not_kept(tmp_path,
                                                              monkeypatch):
    source = make_tile(tmp_path / 'in.laz')
    write_points = laspy.LasWriter.write_points

    def shifted(writer, points):  # a writer that moves every point by 1 cm
        points.array['X'] += 1
        write_points(writer, points)
    monkeypatch.setattr(laspy.LasWriter, 'write_points', shifted)
    cells, p = predictions(1000)
    with pytest.raises(LasError, match='does not read back as written '
                                       r'\(field X'):
        predict(source, tmp_path / 'out.laz', cells, p)
    assert sorted(tmp_path.iterdir()) == [source]


def test_the_source_is_never_the_target(tmp_path):
    source = make_tile(tmp_path / 'in.laz')
    before = source.read_bytes()
    cells, p = predictions(1000)
    with pytest.raises(LasError, match='would overwrite the original tile'):
        predict(source, tmp_path / '.' / 'in.laz', cells, p)
    assert source.read_bytes() == before


@pytest.mark.parametrize('cells, message', [
    (np.zeros(999, np.int32), '1000 points but 999 point_cells'),
    (np.full(1000, 250, np.int32), r'outside -1\.\.249'),
])
def test_cells_that_do_not_fit_the_tile_are_refused(tmp_path, cells,
                                                    message):
    source = make_tile(tmp_path / 'in.laz')
    _, p = predictions(1000)
    with pytest.raises(ValueError, match=message):
        predict(source, tmp_path / 'out.laz', cells, p)
    assert sorted(tmp_path.iterdir()) == [source]


def test_a_single_point_without_crs(tmp_path):
    source = make_tile(tmp_path / 'one.las', n=1, crs=False)
    p = np.array([[0.25, 0.75, 0, 0, 0]], np.float32)
    result = predict(source, tmp_path / 'out.laz', np.zeros(1, np.int32), p)
    original, written = laspy.read(source), laspy.read(tmp_path / 'out.laz')
    assert_same_points(original, written)
    assert written['PredictedClassification'].tolist() == [3]
    assert written['entropy'][0] == pytest.approx(
        -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)), rel=1e-6)
    assert [type(v).__name__ for v in written.header.vlrs] == \
        ['VLR', 'ExtraBytesVlr']  # the other tool's; no CRS appeared
    assert result['confusion'] == {(int(original.classification[0]), 3): 1}


def test_a_copc_input_gives_a_plain_laz(tmp_path):
    # A stand-in for COPC's records: the 'copc' info VLR and hierarchy EVLR.
    source = make_tile(tmp_path / 'in.copc.laz', evlr=True)
    data = laspy.read(source)
    data.header.vlrs.append(laspy.VLR('copc', 1, 'copc info', b'\0' * 160))
    data.header.evlrs.append(laspy.VLR('copc', 1000, 'EPT hierarchy', b'h'))
    data.write(source)
    cells, p = predictions(1000)
    predict(source, tmp_path / 'out.laz', cells, p)
    written = laspy.read(tmp_path / 'out.laz')
    assert 'copc' not in [v.user_id for v in written.header.vlrs]
    assert [v.user_id for v in written.header.evlrs] == ['test_tool']
    with pytest.raises(LasError, match='not .copc.laz'):
        predict(source, tmp_path / 'out.copc.laz', cells, p)
