"""Checks of a whole config before anything is built or read.

Open3D-ML passes every key of a section on to the class it names and each
class ignores what it does not read: a typo trains the wrong model silently,
hours later. The keys the plugin reads (`model.ncm`, the plugin's `pipeline`
keys, `dataset.demo_data`, `dataset.convert_workers`, LASDataset's keys) and the `pipeline` section as a whole are checked
here, at start, and the first mistake is raised as one ConfigError naming
the key and the file (or the command-line option that set it). So are the
device (present in this torch build), settings a backbone cannot run with
(PVCNN under pipeline.amp) and model.ckpt_path (a file that loads as a
checkpoint).
"""
import inspect
import re
from pathlib import Path

from ..losses import NCMConfig
from ..training import checkpoints
from ..training.devices import require_device
from ..training.options import STOCK_PIPELINE_KEYS, PipelineOptions, device_type

# The first dotted key of a message, e.g. 'model.ncm.direction'.
_KEY = re.compile(r'\b(?:dataset|model|pipeline)(?:\.\w+)+')


class ConfigError(ValueError):
    """A config value the plugin cannot run with."""


def check_config(cfg, source, overridden=()):
    """Raise ConfigError for the first problem of `cfg`.

    cfg: {'dataset': {}, 'model': {}, 'pipeline': {}} after overrides;
    source: the config file; overridden: the dotted keys set on the command
    line, or {dotted key: the option that set it, e.g. '--device'}.
    """
    try:
        check_model(cfg['model'])
        check_pipeline(cfg['pipeline'])
        check_backbone_pipeline(cfg['model'], cfg['pipeline'])
        check_demo_data(cfg['dataset'])
        check_convert_workers(cfg['dataset'])
        check_lidar(cfg['dataset'], cfg['model'])
        check_checkpoint(cfg['model'])  # last: it reads the file
    except (KeyError, TypeError, ValueError) as error:
        message = error.args[0] if error.args else str(error)
        raise ConfigError(f"{where(message, source, overridden)}: "
                          f"{message}") from None


def where(message, source, overridden):
    """The file, or the command-line option, that set the key of `message`."""
    match = _KEY.search(message)
    key = match.group(0) if match else None
    options = overridden if isinstance(overridden, dict) else \
        {dotted: f"--{dotted}" for dotted in overridden}
    for dotted, option in options.items():
        if key is not None and (key == dotted or key.startswith(dotted + '.')
                                or dotted.startswith(key + '.')):
            return f"{option} (command line, config {source})"
    return str(source)


def _registered(kind, name):
    """The class registered under `name`, or None when it is not."""
    import ncm_plugin  # noqa: F401  (fills the registries)
    from open3d._ml3d.utils import get_module
    try:
        # Datasets are registered for every framework, models and
        # pipelines per framework.
        return get_module(kind, name, *(() if kind == 'dataset' else
                                        ('torch',)))
    except (KeyError, ValueError):
        return None


def check_model(model):
    """model.ncm: NCMConfig's checks and the backbone's (`check_ncm`), read
    by the NCM models only; `k` only with the knn neighborhood."""
    from ..models import NCMTerm
    if 'ncm' not in model:
        return
    Model = _registered('model', model.get('name'))
    if Model is not None and not issubclass(Model, NCMTerm):
        raise ValueError(f"model.ncm is read by the NCM models only, but "
                         f"model.name is {model['name']!r}: set model.name: "
                         f"NCM{model['name']} (if the plugin has it) or "
                         f"remove model.ncm")
    section = model['ncm']
    if section is not None and not isinstance(section, dict):
        raise TypeError(f"model.ncm must be a mapping of settings, got "
                        f"{section!r}")
    ncm = NCMConfig.from_dict(section)
    if Model is not None:
        Model.check_ncm(ncm, model)
    if 'k' in (section or {}) and ncm.neighborhood != 'knn':
        raise ValueError(f"model.ncm.k is used only with neighborhood: knn "
                         f"(neighborhood is {ncm.neighborhood!r}, the "
                         f"backbone's own neighbor lists); remove k or set "
                         f"neighborhood: knn")


def check_pipeline(pipeline):
    """Unknown keys, the plugin's keys' types and ranges, and settings that
    need a device the config does not ask for."""
    from ..training.pipeline import NCMSemanticSegmentation
    options = PipelineOptions.from_dict(pipeline)
    Pipeline = _registered('pipeline', pipeline.get('name'))
    plugin_keys = sorted(set(pipeline) - STOCK_PIPELINE_KEYS)
    if Pipeline is not None and plugin_keys and \
            not issubclass(Pipeline, NCMSemanticSegmentation):
        raise ValueError(f"pipeline.{plugin_keys[0]} is read by "
                         f"NCMSemanticSegmentation only, but pipeline.name is "
                         f"{pipeline['name']!r}")
    if options.sync_batchnorm and 'device' in pipeline and \
            device_type(pipeline['device']) != 'cuda':
        raise ValueError("pipeline.sync_batchnorm needs --device cuda: torch's "
                         "SyncBatchNorm has no CPU implementation")
    try:
        require_device(pipeline.get('device'))
    except ValueError as error:
        raise ValueError(f"pipeline.device: {error}") from None


def check_backbone_pipeline(model, pipeline):
    """Pipeline settings the backbone cannot run with. PVCNN (the stock one
    too: NCMSemanticSegmentation is what reads pipeline.amp) refuses
    pipeline.amp."""
    from open3d._ml3d.torch.models.pvcnn import PVCNN
    from ..models.pvcnn import NCMPVCNN
    Model = _registered('model', model.get('name'))
    if Model is not None and issubclass(Model, PVCNN):
        NCMPVCNN.check_pipeline(PipelineOptions.from_dict(pipeline),
                                name=model['name'])


def check_checkpoint(model):
    """model.ckpt_path (--ckpt_path): a file that loads as a checkpoint
    holding model weights, read now rather than after the dataset."""
    path = model.get('ckpt_path')
    if not path:
        return
    if not Path(path).is_file():
        raise ValueError(f"model.ckpt_path {path}: no such file"
                         if not Path(path).exists() else
                         f"model.ckpt_path {path} is not a file")
    try:
        ckpt = checkpoints.load(path)
    except checkpoints.CheckpointError as error:
        raise ValueError(f"model.ckpt_path: {error}") from None
    if 'model_state_dict' not in ckpt:
        raise ValueError(f"model.ckpt_path: {path} is not a checkpoint (a "
                         f"dict without 'model_state_dict'; its keys are "
                         f"{sorted(map(str, ckpt))[:8]})")


def check_convert_workers(dataset):
    """dataset.convert_workers (RobustS3DIS): processes of the raw
    conversion, an int >= 1 or null (all CPUs)."""
    workers = dataset.get('convert_workers')
    if workers is None:
        return
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"dataset.convert_workers must be an int or null, "
                        f"got {workers!r}")
    if workers < 1:
        raise ValueError(f"dataset.convert_workers must be >= 1 or null (all "
                         f"CPUs), got {workers}")


def check_demo_data(dataset):
    """dataset.demo_data: {kind: <a synthetic dataset>, <its writer's
    options>} and a dataset_path to write it to."""
    if 'demo_data' not in dataset:
        return
    from ..datasets.demo import WRITERS
    demo = dataset['demo_data']
    if not isinstance(demo, dict) or 'kind' not in demo:
        raise TypeError(f"dataset.demo_data must be a mapping with a 'kind' "
                        f"(one of {sorted(WRITERS)}), got {demo!r}")
    if demo['kind'] not in WRITERS:
        raise ValueError(f"dataset.demo_data.kind must be one of "
                         f"{sorted(WRITERS)}, got {demo['kind']!r}")
    # The first parameter is the folder, dataset.dataset_path.
    accepted = sorted(list(inspect.signature(
        WRITERS[demo['kind']]).parameters)[1:])
    unknown = sorted(set(demo) - {'kind'} - set(accepted))
    if unknown:
        raise KeyError(f"dataset.demo_data.{unknown[0]}: unknown option of "
                       f"the {demo['kind']!r} writer; it takes {accepted}")
    if not dataset.get('dataset_path'):
        raise ValueError("dataset.demo_data needs dataset.dataset_path: the "
                         "folder to write the synthetic data to")


def check_lidar(dataset, model):
    """LASDataset: its settings (class map, features, grid) and the model's
    classes agree with them: labels 1..K of class_names, 0 ignored."""
    from ..datasets.lidar.loader import LASDataset
    from ..datasets.lidar.settings import LidarSettings
    Dataset = _registered('dataset', dataset.get('name'))
    if Dataset is None or not issubclass(Dataset, LASDataset):
        return
    settings = LidarSettings.from_config(dataset)
    classes = settings.num_classes
    if model.get('num_classes') is not None and \
            model['num_classes'] != classes:
        raise ValueError(f"model.num_classes is {model['num_classes']} but "
                         f"dataset.class_names has {classes} classes")
    if 0 not in list(model.get('ignored_label_inds') or []):
        raise ValueError("model.ignored_label_inds must hold 0: LASDataset "
                         "gives label 0 to the codes outside dataset.class_map")
    values = model.get('lbl_values')
    if values is not None and list(values) != list(range(classes + 1)):
        raise ValueError(f"model.lbl_values must be {list(range(classes + 1))}"
                         f" (0 ignored, then the {classes} classes), got "
                         f"{list(values)}")
    if model.get('in_features_dim') is not None:
        check_kpconv_features(model['in_features_dim'], settings)


def check_kpconv_features(in_features_dim, settings):
    """KPConv's batcher builds its input features from the dataset's (after
    the sphere's xyz): 3 = height + the first feature, 5 = height + the
    first three, >= 6 = xyz + every feature (so exactly 4 + F; colour, when
    there is some, adds 3 to F)."""
    features = len(settings.features) + (3 if settings.colour is True else 0)
    if in_features_dim >= 6:
        fits = in_features_dim - 4 in (
            features, features + 3 if settings.colour == 'auto' else features)
    else:
        fits = features >= {3: 1, 5: 3}.get(in_features_dim, 0)
    if not fits:
        raise ValueError(
            f"model.in_features_dim {in_features_dim} does not fit the "
            f"{features} feature(s) of dataset.features "
            f"{list(settings.features)}: KPConv takes 1 (ones), 2 (+ height), "
            f"3 (+ the first feature), 4 (+ x, y, z), 5 (height + the first "
            f"three features) or 4 + the number of features (all)")
