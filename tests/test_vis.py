"""Baseline-vs-NCM views: the headless four-panel PNG, the interactive
window (opened for real under Xvfb), the colours of every view, and the NCM
heatmaps, on a generated S3DIS room with known predictions."""
import os
import queue
import select
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ncm_plugin.datasets.s3dis.synthetic import write_demo_s3dis
from ncm_plugin.evaluation.vis.compare import (load_comparison, load_dataset,
                                               view_colours, view_legend)
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


def test_every_view_has_the_dataset_colours(two_runs):
    root, data, name, changed = two_runs
    dataset, model = load_dataset('ncm_kpconv_demo.yml', data)
    comparison = load_comparison(dataset, model['ignored_label_inds'],
                                 root / 'base', root / 'ncm', name)
    views = view_colours(comparison, ('KPConv', 'NCM-KPConv'))
    assert list(views) == ['input', 'ground truth', 'KPConv', 'NCM-KPConv',
                           'improvement']
    table_colour = dataset.get_label_to_names()[TABLE]
    assert table_colour == 'table'
    # Open3D-ML's default LabelLUT colour of label k, looked up directly.
    from open3d.ml.vis import LabelLUT
    expected = np.array(LabelLUT.get_colors()[:13])[comparison.truth]
    np.testing.assert_allclose(views['ground truth'], expected)
    np.testing.assert_allclose(views['KPConv'], expected)
    band = comparison.ncm != comparison.truth
    assert band.sum() == changed
    np.testing.assert_allclose(views['NCM-KPConv'][band],
                               np.tile(LabelLUT.get_colors()[TABLE], (changed, 1)))
    red, grey = (0.90, 0.10, 0.10), (0.80, 0.80, 0.80)
    np.testing.assert_allclose(views['improvement'][band], np.tile(red, (changed, 1)))
    np.testing.assert_allclose(views['improvement'][~band],
                               np.tile(grey, ((~band).sum(), 1)))
    np.testing.assert_allclose(views['input'], comparison.colors)
    legend = [n for n, _ in view_legend(comparison, 'ground truth')]
    assert 'table' in legend and len(legend) == len(
        np.unique(np.concatenate([comparison.truth, comparison.ncm])))
    assert view_legend(comparison, 'input') == []
    without = comparison.without(['ceiling'])
    assert 0 < len(without.points) < len(comparison.points)


def start_x_server():
    """(process, display) of a new Xvfb; skips where none can be started."""
    xvfb = shutil.which('Xvfb')
    if xvfb is None:
        pytest.skip('no X server: Xvfb is not installed '
                    '(scripts/install.sh installs the xvfb package)')
    read_end, write_end = os.pipe()
    server = subprocess.Popen([xvfb, '-displayfd', str(write_end), '-screen',
                               '0', '1600x1000x24', '-nolisten', 'tcp'],
                              pass_fds=(write_end,), stderr=subprocess.DEVNULL)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 30)
    number = os.read(read_end, 16).decode().strip() if ready else ''
    os.close(read_end)
    if not number:
        server.kill()
        pytest.skip('no X server: Xvfb did not start within 30 s')
    return server, f':{number}'


def read_xwd(data):
    """Pixels [H, W, 3] of an X window dump (xwd's format, true colour with
    24 or 32 bits a pixel)."""
    fields = struct.unpack('>20I', data[:80])
    header_size, width, height, byte_order = fields[0], fields[4], fields[5], \
        fields[7]
    bits_per_pixel, bytes_per_line, ncolors = fields[11], fields[12], fields[19]
    size = bits_per_pixel // 8
    assert size in (3, 4), bits_per_pixel
    rows = np.frombuffer(data, np.uint8, height * bytes_per_line,
                         header_size + 12 * ncolors).reshape(height, -1)
    pixels = rows[:, :size * width].reshape(height, width, size)
    # Least significant byte first: blue, green, red (, pad); else reversed.
    order = [2, 1, 0] if byte_order == 0 else [size - 3, size - 2, size - 1]
    return pixels[..., order]


def capture_screen(display):
    """The X server's screen [H, W, 3], or None without xwd."""
    if shutil.which('xwd') is None:
        return None
    dump = subprocess.run(['xwd', '-root', '-silent', '-display', display],
                          capture_output=True, check=True, timeout=60).stdout
    return read_xwd(dump)


class Window:
    """scripts/visualize_compare.py's window, driven through its stdin."""

    def __init__(self, args, display):
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / 'scripts' / 'visualize_compare.py'),
             *map(str, args), '--commands-from-stdin'],
            env={**os.environ, 'DISPLAY': display}, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        self.lines, self.seen = queue.Queue(), []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip('\n'))
        self.lines.put(None)

    def wait_for(self, expected, timeout=300):
        """Read the window's output until `expected`; `timeout` bounds a
        hang only (software rendering on a loaded 2-core machine took more
        than 120 s for one view)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {expected!r} within {timeout} s; "
                                     f"output: {self.seen[-30:]}")
            if line is None:
                raise AssertionError(f"the window ended before {expected!r}: "
                                     f"{self.seen[-30:]}")
            self.seen.append(line)
            if line == expected:
                return

    def send(self, command, expected):
        self.process.stdin.write(command + '\n')
        self.process.stdin.flush()
        self.wait_for(expected)
        assert self.process.poll() is None, self.seen[-30:]


def test_the_window_opens_and_flips_between_baseline_and_ncm(two_runs,
                                                             tmp_path):
    root, data, name, changed = two_runs
    server, display = start_x_server()
    window = None
    try:
        window = Window(['--dataset-config', 'ncm_kpconv_demo.yml',
                         '--dataset_path', data, '--runs', root / 'base',
                         root / 'ncm', '--cloud', name], display)
        window.wait_for('shown input')
        assert window.process.poll() is None
        screens, images = {}, {}
        for command, view in (('show ground truth', 'ground truth'),
                              ('show baseline', 'baseline'),
                              ('flip', 'NCM')):
            window.send(command, f'shown {view}')
            screens[view] = capture_screen(display)
            path = tmp_path / f'{view}.png'
            window.send(f'save {path}', f'saved {path}')
            images[view] = np.asarray(Image.open(path).convert('RGB')).astype(int)
        for image in images.values():
            drawn = (image != 255).any(axis=2).mean()
            assert 0.05 < drawn < 0.95, 'the 3D view is blank or full'
        # Same predictions, same pixels; the NCM run's band, other pixels.
        assert np.array_equal(images['ground truth'], images['baseline'])
        assert (images['NCM'] != images['baseline']).any(axis=2).sum() > 100
        if screens['NCM'] is not None:
            screen = screens['NCM'].reshape(-1, 3)
            assert len(np.unique(screen, axis=0)) > 20, 'the screen is blank'
            assert (screens['NCM'] != screens['baseline']).any(axis=2).sum() > 100
        window.process.stdin.write('quit\n')
        window.process.stdin.flush()
        assert window.process.wait(timeout=60) == 0, window.seen[-30:]
    finally:
        if window is not None and window.process.poll() is None:
            window.process.kill()
        server.kill()
        server.wait()


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
