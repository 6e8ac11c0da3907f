"""One cloud that is not a LAS/LAZ tile (inference/clouds.py: a PLY, a
ScanNet mesh, an S3DIS room, a Semantic3D scan, an array) through a trained
model, every original point labelled (inference/cloud_output.py).

The model gets what its dataset gave it in training. The indoor dataset
classes (COLOUR_DATASETS) give 'feat' = r g b in 0..255, float32, and
KPConv's batcher reads 'feat' when in_features_dim is 3 (height and the
first feature), 5 (height and r g b) or 6 and more (x y z and r g b): such
a model needs the cloud's colour, and a cloud without it is a CloudError
naming the file; for in_features_dim 1, 2 and 4 the colour is not model
input and is left out. RandLA-Net and PointTransformer read it when
in_channels is above 3 (x y z, then r g b), SparseConvUnet always. The cloud goes through the model's own `preprocess`
(its grid), then the whole-cloud covering of engine.py; each original point
takes the scores of its preprocessed point (`proj_inds`, or itself where the
preprocess keeps every point).

Predicted labels are dataset labels: class c of the model is the c-th of
lbl_values that is not in ignored_label_inds (Open3D-ML's convention; e.g.
ScanNet20 and Semantic3D predict 1..K, S3DIS 0..12).
"""
import logging

import numpy as np

from .cloud_output import write_predictions
from .clouds import CloudError, read_cloud
from .engine import predict_cloud, projection

log = logging.getLogger(__name__)

# Dataset classes whose 'feat' is r g b 0..255 (S3DIS, ScanNet, Semantic3D,
# stock and ours).
COLOUR_DATASETS = ('S3DIS', 'RobustS3DIS', 'Scannet', 'ScanNet20',
                   'Semantic3D', 'RobustSemantic3D')


def dataset_class(trained):
    """The dataset class the model was trained on: the checkpoint's
    input_settings, else its config (checkpoints that recorded none)."""
    return (trained.input_settings.get('dataset_class') or
            trained.config['dataset'].get('name'))


def uses_colour(trained):
    """Whether the model reads colour; a model of a dataset class outside
    COLOUR_DATASETS is a ValueError (its features are not colour)."""
    name = dataset_class(trained)
    if name not in COLOUR_DATASETS:
        raise ValueError(f"{trained.path}: a model trained on {name}, not on "
                         f"{', '.join(COLOUR_DATASETS)}: its input is not "
                         f"read from PLY, text or array clouds")
    from open3d._ml3d.torch.models import SparseConvUnet
    cfg = trained.model.cfg
    if cfg.get('in_features_dim') is not None:  # KPConv
        dim = int(cfg.in_features_dim)
        return dim == 3 or dim >= 5
    if isinstance(trained.model, SparseConvUnet):  # the colour alone
        return True
    return int(cfg.get('in_channels', 3)) > 3  # x y z, then the colour


def confusion_of(labels, predicted, ignored=()):
    """{(label in the file, predicted label): points} over the points whose
    label is not ignored (the LAS path's form, for predict.log_confusion)."""
    keep = ~np.isin(labels, list(ignored))
    pairs, counts = np.unique(np.stack([labels[keep], predicted[keep]],
                                       axis=1), axis=0, return_counts=True)
    return {(int(a), int(b)): int(c) for (a, b), c in zip(pairs, counts)}


def cloud_provenance(trained, votes, seed, batch_size=None):
    """What classify_cloud stores in its output (compare with
    cloud_output.read_provenance to skip a finished output)."""
    return trained.provenance(votes=votes, seed=seed, batch_size=batch_size)


def classify_cloud(trained, source, target, votes=1, seed=0, device='cpu',
                   progress=None, batch_size=None, num_workers=0):
    """Write the classified copy of `source` (a file or an S3DIS room
    folder) at `target` (cloud_output.output_name gives its name); returns
    {'points', 'model_points', 'spheres', 'votes', 'kind'} and, when the
    input has labels, 'confusion' {(label, predicted label): points} over
    its labelled (not ignored) points."""
    needs_colour = uses_colour(trained)
    cloud = read_cloud(source)
    model = trained.model
    if needs_colour and cloud.colour is None:
        raise CloudError(
            f"{source}: no colour (red, green, blue), which the model was "
            f"trained with ({dataset_class(trained)} colour, in_features_dim "
            f"{model.cfg.in_features_dim})")
    n = len(cloud.points)
    data = model.preprocess(
        {'point': cloud.points,
         'feat': cloud.colour if needs_colour else None,
         'label': np.zeros(n, dtype=np.int32)}, {'split': 'test'})
    scores = predict_cloud(model, data, votes=votes, seed=seed, device=device,
                           progress=progress, batch_size=batch_size,
                           num_workers=num_workers)
    probabilities = scores.probabilities[projection(data, n, source)]
    values = trained.label_values
    if len(values) != probabilities.shape[1]:
        raise ValueError(f"{trained.path}: {len(values)} labels (without the "
                         f"ignored ones) for a model of "
                         f"{probabilities.shape[1]} classes")
    predicted = values[probabilities.argmax(axis=1)]
    write_predictions(cloud, target, predicted, probabilities,
                      trained.class_names,
                      provenance=cloud_provenance(trained, votes, seed,
                                                 batch_size))
    log.info("%s: %d points (%d on the model's grid), %d spheres x %d "
             "vote(s) -> %s", source, n, len(data['point']), scores.spheres,
             votes, target)
    report = {'points': n, 'model_points': int(len(data['point'])),
              'spheres': scores.spheres, 'votes': votes, 'kind': cloud.kind}
    if cloud.labels is not None:
        report['confusion'] = confusion_of(
            cloud.labels, predicted, trained.input_settings.get(
                'ignored_label_inds') or ())
    return report
