"""Test-time throughput (points per second) with and without the plugin.

The NCM term only exists in the training loss, so inference should run at
the stock speed: the same test batches (a config's test split, sampled as
Open3D-ML's run_test samples them) go through the stock KPFCNN and through
NCMKPFCNN with identical weights, forward + softmax in eval mode, the two
models interleaved. Data loading is left out: it is the same code for both.
"""
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ...config import load_config, resolve_config
from ..runner import build


def test_batches(config, dataset_path, device, count, seed=0):
    """(NCMKPFCNN, stock KPFCNN with its weights, [count test batches])."""
    from open3d._ml3d.torch.dataloaders import TorchDataloader, get_sampler
    from open3d._ml3d.torch.models.kpconv import KPFCNN
    from torch.utils.data import DataLoader
    cfg = load_config(resolve_config(config))
    if dataset_path is None:
        from ...datasets.s3dis.synthetic import write_demo_s3dis
        dataset_path = Path(tempfile.mkdtemp(prefix='ncm_bench_')) / 's3dis'
        write_demo_s3dis(dataset_path, seed=seed)
    cfg['dataset'].update(dataset_path=str(dataset_path),
                          cache_dir=str(Path(dataset_path) / 'cache'))
    cfg['pipeline'].update(device=device, num_workers=0,
                           main_log_dir=tempfile.mkdtemp(prefix='ncm_logs_'))
    np.random.seed(seed)
    torch.manual_seed(seed)
    dataset, model, pipeline = build(cfg, seed)
    split = dataset.get_split('test')
    loader = DataLoader(
        TorchDataloader(dataset=split, preprocess=model.preprocess,
                        transform=model.transform, sampler=split.sampler,
                        use_cache=False),
        batch_size=cfg['pipeline']['test_batch_size'],
        sampler=get_sampler(split.sampler),
        collate_fn=pipeline.get_batcher(pipeline.device).collate_fn)
    model.trans_point_sampler = split.sampler.get_point_sampler()
    batches = []
    for inputs in loader:
        batches.append(inputs['data'])
        if len(batches) == count:
            break
    stock_cfg = {k: v for k, v in cfg['model'].items() if k != 'ncm'}
    stock = KPFCNN(**{**stock_cfg, 'name': 'KPFCNN'})
    stock.load_state_dict(model.state_dict())
    for net in (model, stock):
        net.to(pipeline.device).eval()
    return model, stock, batches


def inference_seconds(model, batches):
    """Seconds to run forward + softmax over all batches."""
    sync = torch.cuda.synchronize if batches[0].features.is_cuda else None
    if sync:
        sync()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            torch.softmax(model(batch), dim=-1)
    if sync:
        sync()
    return time.perf_counter() - start


def run(args):
    ours, stock, batches = test_batches(args.config, args.dataset_path,
                                        args.device, args.batches, args.seed)
    points = sum(int(b.lengths[0].sum()) for b in batches)
    best = {'stock KPFCNN': float('inf'), 'NCMKPFCNN (plugin)': float('inf')}
    for rep in range(args.repeats + 1):
        order = list(best) if rep % 2 else list(best)[::-1]
        for name in order:
            seconds = inference_seconds(stock if name.startswith('stock')
                                        else ours, batches)
            if rep:  # the first round warms up
                best[name] = min(best[name], seconds)
    print(f"test-time throughput: {len(batches)} test batches, {points} "
          f"points, forward + softmax, {args.device}, fastest of "
          f"{args.repeats}")
    for name, seconds in best.items():
        print(f"  {name:<20s} {points / seconds:12,.0f} points/s")
    ratio = best['NCMKPFCNN (plugin)'] / best['stock KPFCNN']
    print(f"  plugin / stock time: {ratio:.3f}")
    return {name: points / s for name, s in best.items()}
