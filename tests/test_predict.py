"""ncm-predict on real IGN LiDAR HD tiles with a tiny KPConv trained here:
every original point labelled in file order, the copy equal to the input
dimension by dimension (read back with laspy), probabilities and entropy as
a direct computation says, kept codes untouched, bad files named while the
others are classified, finished outputs skipped, shards complete."""
import shutil
from pathlib import Path

import laspy
import numpy as np
import pytest

from conftest import tiny_run_overrides
from ncm_plugin.tools.predict import main, plan, shard_of

REPO = Path(__file__).resolve().parent.parent
TILES = REPO / 'tests' / 'data' / 'ign_lidarhd'
TRAIN = 'test_data_77050_627760_LA93_IGN69'
NEW = 'test_data_77055_627760_LA93_IGN69'  # LAS 1.4, point format 8
CLASS_NAMES = ['ground', 'low_vegetation', 'medium_vegetation',
               'high_vegetation', 'building']
CODES = [2, 3, 4, 5, 6]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A tiny NCM-KPConv trained for a few steps on one real tile (a 1 m
    grid: KPConv deform runs at a few thousand points a second here)."""
    from ncm_plugin.tools.runner import main as run
    root = tmp_path_factory.mktemp('trained')
    (root / 'tiles').mkdir()
    shutil.copy(TILES / f'{TRAIN}.laz', root / 'tiles')
    run(['torch', '-c', 'ncm_kpconv_lidar.yml', '--dataset_path',
         str(root / 'tiles'), '--device', 'cpu', '--main_log_dir',
         str(root / 'logs'), '--dataset.cache_dir', str(root / 'cache'),
         '--dataset.grid_size', '1.0',
         *tiny_run_overrides(in_radius=6.0, first_subsampling_dl=1.0)])
    [path] = (root / 'logs').rglob('ckpt_*.pth')
    return path


@pytest.fixture(scope='module')
def predicted(checkpoint, tmp_path_factory):
    """A new tile classified through the command's main."""
    root = tmp_path_factory.mktemp('predicted')
    shutil.copy(TILES / f'{NEW}.laz', root)
    summary = main(['--ckpt', str(checkpoint), str(root / '*.laz'), '--out',
                    str(root / 'out')])
    return root, summary


def test_every_original_point_is_labelled_in_file_order(predicted):
    root, summary = predicted
    assert len(summary['done']) == 1 and not summary['failed']
    source = laspy.read(root / f'{NEW}.laz')
    output = laspy.read(root / 'out' / f'{NEW}.laz')
    assert len(output.points) == len(source.points)
    for dimension in source.point_format.dimension_names:
        assert np.array_equal(np.asarray(output[dimension]),
                              np.asarray(source[dimension])), dimension
    assert output.header.point_format.id == source.header.point_format.id
    assert np.array_equal(output.header.scales, source.header.scales)
    assert np.array_equal(output.header.offsets, source.header.offsets)
    kept = np.isin(source.classification, [7, 18, 65])
    predicted_codes = np.asarray(output['PredictedClassification'])
    assert set(np.unique(predicted_codes[~kept])) <= set(CODES)
    assert np.array_equal(predicted_codes[kept],
                          np.asarray(source.classification)[kept])


def test_probabilities_sum_to_one_and_entropy_is_theirs(predicted):
    root, _ = predicted
    output = laspy.read(root / 'out' / f'{NEW}.laz')
    probabilities = np.stack([np.asarray(output[n]) for n in CLASS_NAMES], 1)
    model = ~np.isin(output.classification, [7, 18, 65])
    np.testing.assert_allclose(probabilities[model].sum(1), 1, atol=1e-5)
    p = probabilities[model].astype(np.float64)
    entropy = -(p * np.log(np.where(p > 0, p, 1))).sum(1)
    np.testing.assert_allclose(np.asarray(output['entropy'])[model], entropy,
                               atol=1e-5)
    codes = np.asarray(CODES)[probabilities[model].argmax(1)]
    assert np.array_equal(np.asarray(output['PredictedClassification'])[model],
                          codes)
    assert not probabilities[~model].any()


def test_a_second_run_skips_what_is_done(predicted, checkpoint):
    root, _ = predicted
    summary = main(['--ckpt', str(checkpoint), str(root / '*.laz'), '--out',
                    str(root / 'out')])
    assert len(summary['skipped']) == 1 and not summary['done']


def test_a_broken_file_is_named_and_the_others_are_classified(
        checkpoint, tmp_path):
    tile = laspy.read(TILES / f'{NEW}.laz')
    small = laspy.LasData(tile.header)
    small.points = tile.points[:3000].copy()
    small.write(tmp_path / 'good.laz')
    data = (tmp_path / 'good.laz').read_bytes()
    (tmp_path / 'cut.laz').write_bytes(data[:len(data) // 2])
    with pytest.raises(SystemExit) as stop:
        main(['--ckpt', str(checkpoint), str(tmp_path / '*.laz'), '--out',
              str(tmp_path / 'out')])
    assert 'cut.laz' in str(stop.value)
    assert (tmp_path / 'out' / 'good.laz').is_file()
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()
                  if p.suffix == '.laz') == ['good.laz']
    assert not [p for p in (tmp_path / 'out').iterdir()
                if p.name.startswith('.')]


def test_shards_are_disjoint_and_together_complete(tmp_path):
    for i in range(7):
        (tmp_path / f't{i}.laz').touch()
    pattern = [str(tmp_path / '*.laz')]
    shares = [plan(pattern, tmp_path / 'out', (i, 3)) for i in range(3)]
    names = [source.name for share in shares for source, _ in share]
    assert sorted(names) == sorted(f't{i}.laz' for i in range(7))
    assert len(set(names)) == 7
    assert shard_of(None, {'WORLD_SIZE': '4', 'RANK': '2'}) == (2, 4)
    assert shard_of(None, {'SLURM_ARRAY_TASK_ID': '3',
                           'SLURM_ARRAY_TASK_COUNT': '5'}) == (3, 5)
    assert shard_of('1/2', {}) == (1, 2)


def test_two_inputs_of_one_output_name_are_refused(tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    (tmp_path / 'a' / 'x.laz').touch()
    (tmp_path / 'b' / 'x.copc.laz').touch()
    with pytest.raises(ValueError, match='would both be written'):
        plan([str(tmp_path / '*' / '*.laz')], tmp_path / 'out', (0, 1))


def test_a_buffer_adds_the_neighbours_points_as_context(checkpoint, tmp_path):
    """--buffer: points of the adjacent tile within the buffer enter the
    grid (context), none of them is written."""
    from ncm_plugin.inference.lidar import classify_tile, context_tiles
    from ncm_plugin.inference.trained import load_trained
    trained = load_trained(checkpoint)
    source, neighbour = (TILES / f'{NEW}.laz',
                         TILES / 'test_data_77060_627760_LA93_IGN69.laz')
    alone = classify_tile(trained, source, tmp_path / 'alone.laz')
    context = classify_tile(trained, source, tmp_path / 'context.laz',
                            neighbours=context_tiles(
                                [source, neighbour],
                                trained.input_settings['dataset']),
                            buffer=5.0)
    assert context['grid_cells'] > alone['grid_cells']
    written = laspy.read(tmp_path / 'context.laz')
    assert len(written.points) == len(laspy.read(source).points)


MEASURE = '''
import resource, sys
from ncm_plugin.tools.predict import main
main(sys.argv[1:])
print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
'''


def peak_rss(checkpoint, tile, out):
    """Peak RSS (bytes) of ncm-predict on one tile, in a process of its own."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, '-c', MEASURE, '--ckpt',
                           str(checkpoint), str(tile), '--out', str(out),
                           '--chunk-points', '250000'],
                          capture_output=True, text=True, timeout=600,
                          env={'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1',
                               'PATH': '/usr/bin:/bin'})
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split('peak_rss_kib')[-1]) * 1024


def test_memory_grows_by_less_than_40_bytes_a_point(checkpoint, tmp_path):
    """Two generated tiles of one 50 m square, 0.3 and 3 million points:
    the model's grid is alike (1 m cells), so what grows is what the run
    holds per input point."""
    from ncm_plugin.datasets.lidar.synthetic import write_synthetic_tile
    extent = (770000.0, 6277000.0, 770050.0, 6277050.0)
    sizes, peaks = (300_000, 3_000_000), []
    for size in sizes:
        tile = tmp_path / f'tile_{size}.laz'
        write_synthetic_tile(tile, size, seed=0, extent=extent)
        peaks.append(peak_rss(checkpoint, tile, tmp_path / f'out_{size}'))
    per_point = (peaks[1] - peaks[0]) / (sizes[1] - sizes[0])
    print(f"ncm-predict peak RSS {peaks[0] / 2**20:.0f} MiB at {sizes[0]:,} "
          f"points, {peaks[1] / 2**20:.0f} MiB at {sizes[1]:,}: "
          f"{per_point:.1f} bytes a point")
    assert per_point < 40, (peaks, per_point)
