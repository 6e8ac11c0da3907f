"""scripts/gpu_check.py in its tiny CPU mode: the term part runs with torch
alone (Open3D blocked), the pipeline part reports every backbone and says
what it could not run here. (The GPU figures themselves need a GPU.)"""
import json
import subprocess
import sys

import pytest

from tiny_training import REPO

SCRIPT = REPO / 'scripts' / 'gpu_check.py'
# The term part as on a bare GPU box: `import open3d` fails.
WITHOUT_OPEN3D = (
    "import runpy, sys; sys.modules['open3d'] = None; "
    "sys.argv = [{script!r}, '--part', 'term', '--device', 'cpu', "
    "'--out', {out!r}]; runpy.run_path({script!r}, run_name='__main__')")
TERM_CHECKS = ('products vs gather-sum', 'column 0 = new = NCMLoss.term',
               'forward+backward time', 'peak memory', 'autocast float16',
               'autocast bfloat16', 'no host-device sync')


@pytest.fixture(scope='module')
def term_report(tmp_path_factory):
    out = tmp_path_factory.mktemp('term')
    done = subprocess.run(
        [sys.executable, '-c', WITHOUT_OPEN3D.format(script=str(SCRIPT),
                                                     out=str(out))],
        cwd=out, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return json.loads((out / 'gpu_check.json').read_text()), out


def checks_named(report, name):
    return [c for c in report['checks'] if c['name'].startswith(name)]


def test_the_term_part_runs_every_check_without_open3d(term_report):
    report, out = term_report
    assert report['part'] == 'term' and report['device'] == 'cpu'
    assert report['tiny'] and report['failed'] == []
    for name in TERM_CHECKS:
        assert len(checks_named(report, name)) == 2, name  # two tiny shapes
    assert '| products vs gather-sum' in (out / 'gpu_check.md').read_text()


def test_the_products_match_the_gather_sum_reference(term_report):
    report, _ = term_report
    for check in checks_named(report, 'products vs gather-sum'):
        assert check['ok'], check
        for construction in ('new', 'column 0'):
            figures = check['figures'][construction]
            assert figures['forward'] < 1e-4 and figures['gradient'] < 1e-4
        # Column 0 parks every dropped slot of the batch in one row of the
        # backward's matrix; the new layout keeps each row's to itself.
        assert check['figures']['column 0']['longest_backward_row'] > \
            10 * check['figures']['new']['longest_backward_row']


def test_both_constructions_give_the_training_term(term_report):
    report, _ = term_report
    for check in checks_named(report, 'column 0 = new = NCMLoss.term'):
        assert check['ok'] and check['value'] < 1e-4, check


def test_half_precision_logits_give_the_float32_term(term_report):
    report, _ = term_report
    for check in checks_named(report, 'autocast'):
        assert check['ok'], check
        assert check['figures']['term_dtype'] == 'float32'


def test_cuda_only_checks_say_why_they_did_not_run(term_report):
    report, _ = term_report
    for name in ('peak memory', 'no host-device sync'):
        for check in checks_named(report, name):
            assert check['ok'] is None and 'needs CUDA' in check['note']


def test_the_pipeline_part_lists_every_backbone_and_what_it_skipped(
        tmp_path):
    from ncm_plugin.tools.gpu_check import main
    from ncm_plugin.tools.gpu_check.pipeline import BACKBONES
    assert main(['--part', 'pipeline', '--device', 'cpu',
                 '--out', str(tmp_path)]) == 0
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert report['failed'] == [] and report['skipped_parts'] == {}
    by_name = {c['name']: c for c in report['checks']}
    for backbone in BACKBONES:
        assert f'{backbone.name}: forward+backward float32' in by_name
    pvcnn = by_name['ncm_pvcnn_s3dis: forward+backward float32']
    assert pvcnn['ok'] is None and 'no kernel' in pvcnn['note']
    for ran in ('ncm_kpconv_s3dis', 'ncm_randlanet_s3dis'):
        assert by_name[f'{ran}: forward+backward float32']['ok'] is True
        assert by_name[f'{ran}: forward+backward amp']['ok'] is None
    assert by_name['ncm_kpfcnn_s3dis: forward+backward float32']['ok'] is None
    demo = [c for c in report['checks'] if c['name'].startswith('demo')]
    assert demo[0]['ok'] is True
    assert by_name['ncm_kpconv_s3dis: two deterministic runs and 0 vs 1 '
                   'workers, equal weights']['ok'] is True
    assert 'not run' in (tmp_path / 'gpu_check.md').read_text()
    # The runs' folder (data, logs, kernels) is gone after a clean run.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'gpu_check.json', 'gpu_check.md']
