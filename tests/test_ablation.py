"""scripts/ablate_kl.py on a tiny budget: five runs, one table, the KL report."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_run_overrides
from ncm_plugin.datasets.s3dis.synthetic import write_demo_s3dis

REPO = Path(__file__).resolve().parent.parent


def test_ablation_trains_every_variant_and_writes_one_table(tmp_path):
    data = tmp_path / 'Stanford3dDataset'
    write_demo_s3dis(data, areas=(1, 5), rooms_per_area=1, seed=4)
    out = tmp_path / 'ablation'
    budget = [*tiny_run_overrides(1.5, 0.15), '--pipeline.max_epoch', '1',
              '--dataset.steps_per_epoch_train', '2']
    result = subprocess.run(
        [sys.executable, str(REPO / 'scripts' / 'ablate_kl.py'), '--config',
         'ncm_kpconv_demo.yml', '--out', str(out), '--seed', '3',
         '--dataset_path', str(data), '--device', 'cpu',
         '--dataset.cache_dir', str(tmp_path / 'cache'), *budget,
         '--variants', 'baseline', 'forward-scene', 'reverse-sample'],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((out / 'ablation.json').read_text())
    names = [r['name'] for r in summary['runs']]
    assert names == ['baseline', 'reverse-sample', 'forward-scene']
    for run in summary['runs']:
        assert (out / run['name'] / 'run.log').exists()
        if run['name'] == 'baseline':
            assert run['kl_per_epoch'] == []
        else:
            assert len(run['kl_per_epoch']) == 2  # epochs 0 and 1
            assert run['kl_fell'] == (run['kl_last'] < run['kl_first'])
    # Scene targets live in their own preprocessing cache, next to the one
    # the baseline and sample runs share.
    assert len(list((tmp_path / 'cache').iterdir())) == 2
    table = (out / 'ablation.csv').read_text().splitlines()
    assert [line.split(',')[0] for line in table[1:]] == names + [
        f'{n} - baseline' for n in names[1:]]
    text = (out / 'ablation.md').read_text()
    assert '| forward-scene |' in text and 'fell' in text
    assert text in result.stdout


def test_several_seeds_give_the_statistics_of_the_per_seed_results(tmp_path):
    """2 seeds x 2 variants on the real LiDAR tiles: mean, sample standard
    deviation and paired differences equal numpy's, computed here from the
    four results.json files."""
    out = tmp_path / 'ablation'
    budget = [*tiny_run_overrides(6.0, 0.5), '--pipeline.max_epoch', '0',
              '--dataset.steps_per_epoch_train', '2']
    result = subprocess.run(
        [sys.executable, str(REPO / 'scripts' / 'ablate_kl.py'), '--config',
         'ncm_kpconv_ign_lidarhd.yml', '--out', str(out), '--seed', '5',
         '--seeds', '2', '--variants', 'baseline', 'reverse-sample',
         '--dataset_path', str(REPO / 'tests' / 'data' / 'ign_lidarhd'),
         '--device', 'cpu', '--dataset.grid_size', '0.5',
         '--dataset.cache_dir', str(tmp_path / 'cache'), *budget],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    figures = {}
    for name in ('baseline', 'reverse-sample'):
        runs = [json.loads(next((out / f'seed{s}' / name).rglob(
            'results.json')).read_text()) for s in (5, 6)]
        figures[name] = {'mIoU': [r['miou'] for r in runs],
                         'OA': [r['overall_accuracy'] for r in runs],
                         'ground': [r['per_class_iou']['ground'] for r in runs]}
    summary = json.loads((out / 'ablation.json').read_text())
    assert [r['seed'] for r in summary['runs']] == [5, 5, 6, 6]
    statistics = json.loads((out / 'ablation_seeds.json').read_text())
    for name, columns in figures.items():
        entry = statistics['statistics'][name]
        for column, values in columns.items():
            assert entry['mean'][column] == pytest.approx(np.mean(values))
            assert entry['std'][column] == pytest.approx(np.std(values, ddof=1))
    diff = statistics['statistics']['reverse-sample']['difference']
    for column in ('mIoU', 'OA', 'ground'):
        paired = np.subtract(figures['reverse-sample'][column],
                             figures['baseline'][column])
        assert diff['mean'][column] == pytest.approx(paired.mean())
        assert diff['std'][column] == pytest.approx(paired.std(ddof=1))
        assert diff['wins'][column] == int((paired > 0).sum())
    text = (out / 'ablation.md').read_text()
    assert '| reverse-sample - baseline | 2 |' in text
    assert f"{np.mean(figures['baseline']['mIoU']):.2f} ± " in text
    assert text in result.stdout
