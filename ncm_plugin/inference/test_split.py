"""The test split of a configured dataset through the prediction engine
(engine.py), for every backbone it covers (all but PVCNN): every test
cloud covered by planned spheres (KPConv), crops (RandLA-Net) or whole
(PointTransformer, SparseConvUnet), `pipeline.test_votes` coverings
averaged, the scores carried to every point of the cloud as the dataset
gives it, metrics on those points.

Open3D-ML's own test loop chooses each next sphere by a search over the
whole cloud and keeps one smoothed pass; this one is the covering that
`ncm-predict` uses, so the test figures and the command's outputs come
from the same computation.
"""
import logging
import time
from datetime import datetime
from os.path import join

import numpy as np
import torch
from open3d._ml3d.torch.dataloaders import TorchDataloader
from tqdm import tqdm

from ..evaluation.recorder import TestRecorder
from ..training.samplers import preprocessed_cloud
from .engine import (covering_class, default_batch_size, predict_cloud,
                     projection)

log = logging.getLogger(__name__)


def run_test_split(pipeline):
    """Test `pipeline`'s model on its dataset's test split; returns the
    results dict (also in results.json, with the votes)."""
    model, dataset, cfg = pipeline.model, pipeline.dataset, pipeline.cfg
    device = pipeline.device
    votes = pipeline.options.test_votes
    batch_size = default_batch_size(model, cfg)
    model.device = device
    model.to(device)
    handler = logging.FileHandler(join(
        cfg.logs_dir,
        f"log_test_{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}.txt"))
    logging.getLogger().addHandler(handler)
    try:
        pipeline.load_ckpt(model.cfg.ckpt_path)
        model.eval()
        split = dataset.get_split('test')
        torch_split = TorchDataloader(dataset=split,
                                      preprocess=model.preprocess,
                                      use_cache=dataset.cfg.use_cache)
        recorder = TestRecorder(dataset, model.cfg, cfg.logs_dir)
        log.info("Testing %d cloud(s), %d vote(s) each", len(split), votes)
        start = time.perf_counter()
        for index in range(len(split)):
            attr = split.get_attr(index)
            data = preprocessed_cloud(torch_split, index)
            with tqdm(desc=f"test {attr['name']}", unit='pt',
                      unit_scale=True) as bar:
                scores = predict_cloud(model, data, votes=votes,
                                       seed=pipeline.seed, device=device,
                                       progress=bar, batch_size=batch_size)
            # Read again only for a preprocess that gives no proj_inds.
            original = (None if 'proj_inds' in data else
                        len(split.get_data(index)['point']))
            probabilities = scores.probabilities[projection(
                data, original, attr['name'])]
            predicted = probabilities.argmax(axis=1)
            # A dataset may count its original points itself (LAS tiles).
            confusion = dataset.save_test_result(
                {'predict_labels': predicted,
                 'predict_scores': probabilities}, attr)
            recorder.add(split, index, predicted,
                         confusion if isinstance(confusion, np.ndarray)
                         else None)
        results = recorder.write(extra={
            'test_votes': votes, 'engine': 'planned spheres (inference/'
            'engine.py)', 'seconds': time.perf_counter() - start})
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return results


def engine_tests(model):
    """Whether the test split goes through the engine: every backbone it
    covers (engine.covering_class); PVCNN keeps Open3D-ML's own test
    loop."""
    try:
        covering_class(model)
    except ValueError:
        return False
    return True

