"""The benchmark's building blocks (the timings themselves are not tested)."""
import numpy as np
import pytest
import torch

from ncm_plugin.tools.bench.convert import same_points
from ncm_plugin.tools.bench.scaling import linear_fit, ncm_time, synthetic_batch


def test_synthetic_batches_have_kpconv_neighbor_lists():
    logits, labels, batch = synthetic_batch(1003, 7, neighbors=9, clouds=4)
    lengths = batch.lengths[0]
    assert logits.shape == (1003, 7) and labels.max() < 7
    assert lengths.tolist() == [250, 250, 250, 253]
    index = batch.neighbors[0]
    assert index.shape == (1003, 9)
    cloud = torch.repeat_interleave(torch.arange(4), lengths)
    real = index < 1003
    assert 0.8 < real.float().mean() < 0.97  # ~10 % shadow neighbors
    rows = torch.arange(1003).unsqueeze(1).expand_as(index)
    assert torch.equal(cloud[index[real]], cloud[rows[real]])
    assert ncm_time(1003, 7, neighbors=9, repeats=1) > 0


def test_linear_fit_recovers_a_line():
    slope, intercept, r2 = linear_fit([1, 2, 4, 8], [3.5, 5.5, 9.5, 17.5])
    assert (slope, intercept, r2) == pytest.approx((2.0, 1.5, 1.0))


def test_caches_compare_up_to_row_order(tmp_path):
    import pickle
    rows = np.arange(21, dtype=np.float64).reshape(3, 7)
    for name, data in (('a', rows), ('b', rows[::-1]), ('c', rows + 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'Area_1_x.pkl').write_bytes(pickle.dumps([data, []]))
    assert same_points(tmp_path / 'a', tmp_path / 'b')
    assert not same_points(tmp_path / 'a', tmp_path / 'c')


def test_the_data_bench_times_the_batches_asked_of_every_variant(
        tmp_path, monkeypatch, capsys):
    """bench --part data on the tiny KPConv: an untimed epoch, then 1
    repeat of 1 warm-up + 2 timed batches per variant, one profiled epoch of the plugin at 0
    workers and of stock. The batches each loader handed out are counted
    here, at the DataLoader iterator."""
    import json
    from collections import Counter

    from torch.utils.data.dataloader import _BaseDataLoaderIter

    from ncm_plugin.tools.bench.step import main
    from tiny_training import write_cached_s3dis, write_tiny_config
    rooms = write_cached_s3dis(tmp_path / 'rooms', rooms=1)
    config = write_tiny_config(tmp_path / 'tiny.yml', rooms, tmp_path / 'logs')
    handed_out = Counter()
    next_batch = _BaseDataLoaderIter.__next__

    def counted(self):
        out = next_batch(self)
        handed_out[type(self._dataset).__name__, self._num_workers] += 1
        return out

    monkeypatch.setattr(_BaseDataLoaderIter, '__next__', counted)
    out = tmp_path / 'data.json'
    report = main(['--part', 'data', '--config', str(config),
                   '--dataset_path', str(rooms), '--batches', '2',
                   '--repeats', '1', '--warmup', '1', '--out', str(out)])
    report = report['data']
    # 3 batches an epoch (2 workers: 2 warm-up, a whole round of theirs),
    # an untimed epoch and the timed one; the 0-worker plugin and stock
    # run one more to be profiled.
    assert handed_out == {('SphereDataset', 0): 9, ('SphereDataset', 1): 6,
                          ('SphereDataset', 2): 8, ('TorchDataloader', 0): 9}
    rates = report['rates']
    assert list(rates) == ['plugin, 0 workers', 'plugin, 1 worker',
                           'plugin, 2 workers', 'stock, 0 workers']
    stock = rates['stock, 0 workers']
    for name, row in rates.items():
        assert row['batches'] == [4 if name == 'plugin, 2 workers' else 3]
        assert row['batches_timed'] == [2]
        assert row['batches_per_s']['median'] == row['per_repeat'][0] > 0
        assert row['batches_per_cpu_s']['median'] == \
            row['per_repeat_cpu'][0] > 0
        assert row['batches_per_s']['vs_stock'] == pytest.approx(
            row['per_repeat'][0] / stock['per_repeat'][0])
        ratio = row['per_repeat_cpu'][0] / stock['per_repeat_cpu'][0]
        assert row['batches_per_cpu_s']['vs_stock'] == pytest.approx(ratio)
        assert row['batches_per_cpu_s']['paired_vs_stock'] == \
            pytest.approx(ratio)
    assert [len(rates[name]['worker_affinity']) for name in rates] == \
        [0, 1, 2, 0]
    for name in ('plugin, 0 workers', 'stock, 0 workers'):
        profile = report['profiles'][name]
        assert profile['batches_profiled'] == 2
        stages = profile['stages_s']
        assert 0 < stages['collate'] < stages['batch (next() of the DataLoader)']
        assert stages['neighbours, layer 0'] > 0
        assert stages['grid subsampling, layer 0'] > 0
    assert 'sphere choice, main process (plugin)' in \
        report['profiles']['plugin, 0 workers']['stages_s']
    assert json.loads(out.read_text())['rates'] == json.loads(
        json.dumps(rates))
    printed = capsys.readouterr().out
    assert '| variant | batches/s (median) |' in printed
    assert '| stage | plugin, 0 workers: ms a batch |' in printed


def test_worker_variants_time_whole_rounds_of_their_workers():
    from ncm_plugin.tools.bench.data import whole_rounds
    assert [whole_rounds(n, 2) for n in (1, 2, 3, 10)] == [2, 2, 4, 10]
    assert [whole_rounds(n, w) for n, w in ((3, 0), (3, 1), (0, 2))] == \
        [3, 3, 0]


def test_the_epoch_bench_runs_the_variants_named_by_position():
    from ncm_plugin.tools.bench.epoch import VARIANTS, chosen
    assert chosen(None) == VARIANTS
    assert [name for name, _, _ in chosen(['4', '5'])] == [
        'plugin, 0 workers, NCM weight 0', 'stock run_train, 0 workers']
    with pytest.raises(SystemExit, match=r"--variants: positions 1-5"):
        chosen(['6'])
