"""Baseline-vs-NCM views: the headless four-panel PNG, the visualizer's
data, and the NCM heatmaps, on a generated S3DIS room with known predictions."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ncm_plugin.datasets.s3dis.synthetic import write_demo_s3dis
from ncm_plugin.evaluation.vis.compare import (load_comparison, load_dataset,
                                               visualizer_data)
from ncm_plugin.evaluation.vis.render import image_size, panel_boxes

REPO = Path(__file__).resolve().parent.parent
TABLE = 7  # S3DIS label of 'table'


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
    """A test room, a 'baseline' run that predicts its ground truth exactly
    and an 'NCM' run that calls a horizontal band of it table."""
    root = tmp_path_factory.mktemp('vis')
    data = root / 'Stanford3dDataset'
    write_demo_s3dis(data, areas=(1, 5), rooms_per_area=1, seed=4)
    dataset, _ = load_dataset('ncm_kpconv_demo.yml', data)
    split = dataset.get_split('test')
    cloud, name = split.get_data(0), split.get_attr(0)['name']
    truth = cloud['label'].astype(np.int32)
    ncm = truth.copy()
    band = (cloud['point'][:, 2] > 1.0) & (cloud['point'][:, 2] < 1.5)
    ncm[band] = TABLE
    for run, labels in (('base', truth), ('ncm', ncm)):
        (root / run / 'predictions').mkdir(parents=True)
        np.save(root / run / 'predictions' / f'{name}.npy', labels)
    return root, data, name, int((ncm != truth).sum())


def run_script(script, *args):
    return subprocess.run([sys.executable, str(REPO / 'scripts' / script),
                           *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_png_has_four_panels_that_differ_where_the_predictions_differ(
        two_runs, tmp_path):
    root, data, name, changed = two_runs
    assert changed > 1000
    png = tmp_path / 'compare.png'
    result = run_script('visualize_compare.py', '--dataset-config',
                        'ncm_kpconv_demo.yml', '--dataset_path', data, '--runs',
                        root / 'base', root / 'ncm', '--cloud', name, '--png',
                        png, '--size', 240, 200)
    assert result.returncode == 0, result.stderr[-3000:]
    image = np.asarray(Image.open(png).convert('RGB')).astype(int)
    assert image.shape == (image_size(240, 200)[1], image_size(240, 200)[0], 3)
    panels = {k: image[t:b, l:r] for k, (l, t, r, b) in
              panel_boxes(240, 200).items()}
    for key, panel in panels.items():
        drawn = (panel != 255).any(axis=2)
        assert 0.05 < drawn.mean() < 0.95, f'{key} panel is blank or full'
    # Same predictions, same pixels; different predictions, other pixels.
    assert np.array_equal(panels['ground truth'], panels['baseline'])
    differ = (panels['NCM'] != panels['baseline']).any(axis=2)
    assert differ.sum() > 100
    assert not np.array_equal(panels['input'], panels['ground truth'])
    # The improvement view marks the band red (baseline right, NCM wrong)
    # and has no green (NCM right, baseline wrong); edges are blended, so
    # colours are told apart by their dominant channel.
    r, g, b = panels['improvement'].reshape(-1, 3).T
    assert ((r > g + 100) & (r > b + 100)).sum() > 100
    assert ((g > r + 60) & (g > b + 60)).sum() == 0


def test_visualizer_gets_every_view_with_the_dataset_colours(two_runs):
    root, data, name, changed = two_runs
    dataset, model = load_dataset('ncm_kpconv_demo.yml', data)
    comparison = load_comparison(dataset, model['ignored_label_inds'],
                                 root / 'base', root / 'ncm', name)
    cloud, luts = visualizer_data(comparison)
    assert set(cloud) == {'name', 'points', 'colors', 'ground truth',
                          'baseline', 'NCM', 'improvement'}
    assert np.bincount(cloud['improvement'], minlength=5).tolist() == [
        len(cloud['points']) - changed, 0, changed, 0, 0]
    assert luts['ground truth'].labels[TABLE].name == 'table'
    assert luts['improvement'].labels[1].name == 'NCM right, baseline wrong'
    assert cloud['colors'].max() > 1  # 0..255, the visualizer's default
    without = comparison.without(['ceiling'])
    assert 0 < len(without.points) < len(comparison.points)


def test_heatmaps_of_target_and_both_predictions_are_written(two_runs,
                                                             tmp_path):
    root, data, name, _ = two_runs
    out = tmp_path / 'ncm.png'
    result = run_script('show_ncm.py', '--dataset-config',
                        'ncm_kpconv_demo.yml', '--dataset_path', data, '--runs',
                        root / 'base', root / 'ncm', '--out', out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(out).size[0] > 800
    matrices = np.load(out.with_suffix('.npz'))
    assert list(matrices['classes'][:8]) == [
        'ceiling', 'floor', 'wall', 'beam', 'column', 'window', 'door', 'chair']
    assert list(matrices['clouds']) == [name]
    assert matrices['target'].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(matrices['baseline'], matrices['target'])
    table = list(matrices['classes']).index('table')
    # The NCM run's table band: table next to table far more often.
    assert matrices['NCM'][table, table] > matrices['target'][table, table] + 0.01
