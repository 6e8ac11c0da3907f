"""Synthetic airborne LiDAR tiles: read back with laspy's own reader, what a
real classified tile holds (classes, returns, intensity, gps time, colour,
header), deterministic whatever the chunking, and readable by the
project's TileReader."""
import laspy
import numpy as np
import pytest
from scipy.spatial import cKDTree

from ncm_plugin.datasets.demo import write_demo
from ncm_plugin.datasets.lidar.las import TileReader
from ncm_plugin.datasets.lidar.synthetic import (LAMBERT93_WKT,
                                                 write_synthetic_tile)

POINTS = 20_000
EXTENT = (770000.0, 6277000.0, 770100.0, 6277100.0)  # 100 m: 2 points/m2


def write(path, **options):
    arguments = dict(num_points=POINTS, seed=0, extent=EXTENT)
    arguments.update(options)
    return write_synthetic_tile(path, **arguments)


@pytest.fixture(scope='module')
def tile(tmp_path_factory):
    return laspy.read(write(tmp_path_factory.mktemp('tile') / 'tile.las'))


def test_the_tile_holds_exactly_the_points_asked(tile):
    assert len(tile.points) == tile.header.point_count == POINTS


def test_every_class_of_an_ign_tile_is_there(tile):
    codes = set(np.unique(tile.classification).tolist())
    assert {1, 2, 6, 7} <= codes
    assert codes & {3, 4, 5}
    assert codes <= {1, 2, 3, 4, 5, 6, 7}
    assert np.sum(tile.classification == 7) < 0.005 * POINTS  # a few noise


def test_returns_are_consistent(tile):
    number, returns = np.asarray(tile.return_number), np.asarray(tile.number_of_returns)
    assert np.all(1 <= number) and np.all(number <= returns) and np.all(returns <= 5)
    # The returns of a pulse share its gps time and come first to last.
    same_pulse = np.diff(tile.gps_time) == 0
    assert np.all(np.diff(number)[same_pulse] == 1)
    assert np.all(tile.z[1:][same_pulse] <= tile.z[:-1][same_pulse])
    # Several returns through the trees, one on roofs.
    vegetation = np.isin(tile.classification, (3, 4, 5))
    assert returns[vegetation].max() == 5 and np.mean(returns[vegetation] > 1) > 0.3
    assert np.mean(returns[tile.classification == 6] == 1) > 0.9
    assert np.array_equal(tile.header.number_of_points_by_return[:5],
                          np.bincount(number, minlength=6)[1:])


def test_intensity_is_uint16_in_a_realistic_range(tile):
    assert tile.intensity.dtype == np.uint16
    assert tile.intensity.min() > 0 and tile.intensity.max() <= 4000
    for code in (2, 5, 6):
        assert 500 < np.median(tile.intensity[tile.classification == code]) < 1500


def test_points_come_in_acquisition_order(tile):
    assert np.all(np.diff(tile.gps_time) >= 0)
    # Scan lines, not sorted by class: the class changes all along the file.
    assert np.count_nonzero(np.diff(tile.classification)) > 0.05 * POINTS
    assert tile.header.global_encoding.gps_time_type == laspy.header.GpsTimeType.STANDARD


def test_buildings_stand_above_the_ground_nearby(tile):
    xyz = np.stack([tile.x, tile.y, tile.z], axis=1)
    ground, building = xyz[tile.classification == 2], xyz[tile.classification == 6]
    near = cKDTree(ground[:, :2]).query_ball_point(building[:, :2], 12.0)
    lowest = np.array([ground[i, 2].min() for i in near])
    median = np.array([np.median(ground[i, 2]) for i in near])
    assert np.all(building[:, 2] > lowest)
    assert np.mean(building[:, 2] > median + 2.0) > 0.95  # roofs, then walls


def test_the_header_is_ign_like(tile):
    header = tile.header
    assert str(header.version) == '1.4' and header.point_format.id == 6
    assert np.allclose(header.scales, 0.01)
    assert np.allclose(header.offsets, (770000, 6277000, 0))
    assert np.all(header.mins[:2] >= EXTENT[:2]) and np.all(header.maxs[:2] < EXTENT[2:])
    assert header.maxs[0] - header.mins[0] > 99 and header.maxs[1] - header.mins[1] > 99
    assert not header.vlrs  # no CRS by default


def test_a_crs_is_written_when_given(tmp_path):
    header = laspy.read(write(tmp_path / 'crs.laz', num_points=500,
                              crs_wkt=LAMBERT93_WKT)).header
    wkt = header.vlrs.get('WktCoordinateSystemVlr')
    assert len(wkt) == 1 and 'Lambert-93' in wkt[0].string


def test_colour_is_present_exactly_when_asked(tile, tmp_path):
    assert 'red' not in tile.point_format.dimension_names
    coloured = laspy.read(write(tmp_path / 'rgb.laz', point_format=7, colour=True))
    rgb = np.stack([coloured.red, coloured.green, coloured.blue], axis=1)
    assert rgb.dtype == np.uint16 and rgb.any(axis=1).all() and rgb.max() > 255
    assert len(np.unique(rgb[:, 0])) > 100
    plain = laspy.read(write(tmp_path / 'zero.laz', point_format=7))
    assert not np.any(plain.red) and not np.any(plain.blue)  # as IGN's tiles
    # The colour does not change the points.
    assert np.array_equal(coloured.z, tile.z)
    with pytest.raises(ValueError, match='no colour'):
        write(tmp_path / 'bad.laz', point_format=6, colour=True)


def test_las_and_laz_hold_the_same_points(tile, tmp_path):
    compressed = laspy.read(write(tmp_path / 'tile.laz'))
    assert compressed.header.are_points_compressed
    assert np.array_equal(compressed.points.array, tile.points.array)


def test_same_seed_same_file_whatever_the_chunks(tmp_path):
    one = write(tmp_path / 'one.laz', chunk_points=1_000_000).read_bytes()
    many = write(tmp_path / 'many.laz', chunk_points=3_333).read_bytes()
    assert one == many


def test_another_seed_gives_another_tile(tile, tmp_path):
    other = laspy.read(write(tmp_path / 'other.las', seed=1))
    assert not np.array_equal(other.z, tile.z)
    assert not np.array_equal(other.classification, tile.classification)


def test_the_project_reader_reads_it(tile, tmp_path):
    reader = TileReader(write(tmp_path / 'tile.laz'))
    chunks = list(reader.chunks(chunk_points=7_000))
    assert reader.point_count == POINTS and len(chunks) == 3
    assert np.array_equal(np.concatenate([c.codes for c in chunks]),
                          tile.classification)
    assert np.all(reader.origin == np.floor(tile.header.mins))


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match='.las or .laz'):
        write(tmp_path / 'tile.txt')
    with pytest.raises(ValueError, match='gps_time'):
        write(tmp_path / 'tile.las', point_format=2)
    with pytest.raises(ValueError, match='extent'):
        write(tmp_path / 'tile.las', extent=(1, 1, 0, 2))


def test_the_demo_writes_a_folder_of_adjacent_tiles(tmp_path):
    paths = write_demo('lidar', tmp_path / 'tiles', seed=0, points_per_tile=3_000)
    assert [p.name for p in paths][:2] == ['synthetic_77000_627700_LA93.laz',
                                           'synthetic_77010_627700_LA93.laz']
    headers = [laspy.read(p).header for p in paths]
    assert [h.point_count for h in headers] == [3_000] * 4
    assert headers[1].mins[0] >= 770100 > headers[0].maxs[0]
