"""LAS/LAZ tiles: read against laspy's own reading of a real IGN LiDAR HD
tile, classes mapped and written back, bad files named."""
import logging
from pathlib import Path

import laspy
import numpy as np
import pytest

from ncm_plugin.datasets.lidar.las import (ASPRS_CLASS_MAP, LasError,
                                           check_class_map, labels_to_codes,
                                           map_classes, read_tile)

TILE = Path(__file__).parent / 'data' / 'ign_lidarhd' / \
    'test_data_77050_627760_LA93_IGN69.laz'
# From the tile's SOURCES.md (counted by IGN's own tools, not by laspy).
CODE_COUNTS = {1: 4783, 2: 33568, 3: 379, 4: 933, 5: 12154, 6: 4148, 64: 70}


def test_a_real_tile_reads_as_laspy_reads_it():
    tile = read_tile(TILE)
    reference = laspy.read(TILE)
    xyz = np.stack([reference.x, reference.y, reference.z], axis=1)
    assert len(tile.points) == 56035 == len(xyz)
    # Recentred on a whole metre, in float64: exact to the file's 1 cm.
    assert np.all(tile.origin == np.floor(xyz.min(axis=0)))
    np.testing.assert_allclose(tile.points + tile.origin, xyz, rtol=0,
                               atol=1e-9)
    assert tile.points.min() >= 0 and tile.points[:, :2].max() < 51
    assert tile.feature_names == ('intensity', 'return_number',
                                  'number_of_returns')  # RGB all zero: left out
    # Scaled by the default divisors (2000, 5, 5): near 0..1.
    np.testing.assert_allclose(tile.features[:, 0] * 2000, reference.intensity,
                               rtol=1e-6)
    np.testing.assert_allclose(tile.features[:, 1] * 5,
                               reference.return_number, rtol=1e-6)
    np.testing.assert_allclose(tile.features[:, 2] * 5,
                               reference.number_of_returns, rtol=1e-6)
    values, counts = np.unique(tile.codes, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == CODE_COUNTS


def test_codes_map_to_labels_and_unknown_codes_are_counted(caplog):
    codes = np.array([2, 6, 1, 64, 5, 64, 3, 4])
    with caplog.at_level(logging.WARNING):
        labels = map_classes(codes, ASPRS_CLASS_MAP, 'a.laz')
    assert labels.tolist() == [1, 5, 0, 0, 4, 0, 2, 3]
    assert 'a.laz: ASPRS codes not in the class map, ignored: ' \
        '1: 1 points, 64: 2 points' in caplog.text
    assert labels_to_codes(np.array([1, 5, 4, 2, 3, 0]),
                           ASPRS_CLASS_MAP).tolist() == [2, 6, 5, 3, 4, 1]


@pytest.mark.parametrize('class_map, message', [
    ({'ground': 1}, "key 'ground' is not an ASPRS class code"),
    ({300: 1}, 'key 300 is not an ASPRS class code'),
    ({2: 6}, r'dataset.class_map.2: label 6 is out of range 0..5'),
    ({2: -1}, r'label -1 is out of range'),
])
def test_bad_class_maps_name_the_key(class_map, message):
    with pytest.raises(ValueError, match=message):
        check_class_map(class_map, 5)
    assert check_class_map({'2': 1, 6: 5}, 5) == {2: 1, 6: 5}


def test_bad_files_are_named(tmp_path):
    text = tmp_path / 'notes.las'
    text.write_text('x y z\n1 2 3\n')
    with pytest.raises(LasError, match=f'{text}: not a readable LAS/LAZ file'):
        read_tile(text)
    cut = tmp_path / 'cut.laz'
    cut.write_bytes(TILE.read_bytes()[:len(TILE.read_bytes()) // 3])
    with pytest.raises(LasError, match=f'{cut}: '):
        read_tile(cut)
    empty = tmp_path / 'empty.las'
    laspy.create(point_format=1, file_version='1.2').write(empty)
    with pytest.raises(LasError, match=f'{empty}: the file holds no point'):
        read_tile(empty)
    with pytest.raises(LasError, match="point format 8 has no \\['nir_x'\\]"):
        read_tile(TILE, features=('intensity', 'nir_x'))
