"""A trained model from its checkpoint alone: the run's config and input
settings that the checkpoint records (format 2, training/checkpoints.py),
a config file and dotted overrides winning where given."""
import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..training import checkpoints

log = logging.getLogger(__name__)

# Keys of a stored model config that describe the training run, not the
# model (the runner passes the seed; a checkpoint path would load again).
RUN_KEYS = ('seed', 'ckpt_path', 'is_resume')


class TrainedModel(NamedTuple):
    """model (on the CPU, in eval mode), config {'dataset', 'model',
    'pipeline'}, input_settings (as the checkpoint recorded them), path."""
    model: object
    config: dict
    input_settings: dict
    path: Path

    @property
    def label_values(self):
        """[C] dataset label of each model class, as the test split's
        recorder maps them (evaluation/results.py: the recorded
        label_to_names without the ignored labels; lbl_values without them
        for a checkpoint that recorded no names)."""
        from ..evaluation.results import label_values
        names = self._label_to_names()
        if names:
            return label_values(names, self._ignored())
        values = self.input_settings.get('lbl_values') or \
            self.config['model'].get('lbl_values') or []
        return np.array([v for v in values if v not in self._ignored()],
                        dtype=np.int64)

    @property
    def class_names(self):
        """[C] names of the model's classes (their label values as text
        when the checkpoint recorded no names)."""
        from ..evaluation.results import class_names
        names = self._label_to_names()
        if names:
            return class_names(names, self._ignored())
        return [str(v) for v in self.label_values]

    def _label_to_names(self):
        """{label: name} as recorded (its keys are text in the checkpoint)."""
        names = self.input_settings.get('label_to_names') or {}
        return {int(label): name for label, name in names.items()}

    def _ignored(self):
        return set(self.input_settings.get('ignored_label_inds') or
                   self.config['model'].get('ignored_label_inds') or [])

    def provenance(self, **settings):
        """What makes an output this model's (stored with it): the
        checkpoint's path, size and epoch, and the prediction settings."""
        stat = self.path.stat()
        return json.dumps({'checkpoint': str(self.path.resolve()),
                           'checkpoint_bytes': stat.st_size,
                           'checkpoint_mtime_ns': stat.st_mtime_ns,
                           **settings}, sort_keys=True)


def load_trained(ckpt_path, config=None, overrides=None, seed=0):
    """TrainedModel of `ckpt_path`; config: {'dataset', 'model',
    'pipeline'} of a config file that replaces the stored one (for a
    checkpoint written before checkpoints held it); overrides: {dotted key:
    value} applied last."""
    from ..config import apply_overrides
    path = Path(ckpt_path)
    ckpt = checkpoints.load(path)
    if config is None:
        config = checkpoints.config_of(ckpt, path)
    config = {section: dict(values) for section, values in config.items()}
    if overrides:
        apply_overrides(config, overrides, path)
    settings = ckpt.get('input_settings') or {}
    model_cfg = {k: v for k, v in config['model'].items()
                 if k not in RUN_KEYS}
    model = build(model_cfg, seed)
    model.load_state_dict(ckpt['model_state_dict'])
    model.eval()
    log.info("Model %s of %s (epoch %s)", model_cfg['name'], path,
             ckpt.get('epoch'))
    return TrainedModel(model, config, settings, path)


def build(model_cfg, seed):
    """The registered model class of model_cfg['name'], built as the
    runner builds it (KPConv's kernel dispositions on disk)."""
    import ncm_plugin  # noqa: F401  (fills the registries)
    from open3d._ml3d.utils import get_module

    from ..models.build import build_model
    Model = get_module('model', model_cfg['name'], 'torch')
    return build_model(Model, model_cfg, seed)


def class_codes(settings, num_classes):
    """[C] uint8 ASPRS codes of the model's classes 1..C (LASDataset's
    class map inverted: a label several codes map to gets the smallest)."""
    from ..datasets.lidar.las import labels_to_codes
    class_map = {int(code): int(label) for code, label in
                 settings['class_map'].items()}
    return labels_to_codes(np.arange(1, num_classes + 1), class_map)
