"""Checks of a whole config before anything is built or read.

Open3D-ML passes every key of a section on to the class it names and each
class ignores what it does not read: a typo trains the wrong model silently,
hours later. The keys the plugin reads (`model.ncm`, the plugin's `pipeline`
keys, `dataset.demo_data`, `dataset.convert_workers`) and the `pipeline` section as a whole are checked
here, at start, and the first mistake is raised as one ConfigError naming
the key and the file (or the command-line override that set it).
"""
import inspect
import re

from ..losses import NCMConfig
from ..training.options import STOCK_PIPELINE_KEYS, PipelineOptions, device_type

# The first dotted key of a message, e.g. 'model.ncm.direction'.
_KEY = re.compile(r'\b(?:dataset|model|pipeline)(?:\.\w+)+')


class ConfigError(ValueError):
    """A config value the plugin cannot run with."""


def check_config(cfg, source, overridden=()):
    """Raise ConfigError for the first problem of `cfg`.

    cfg: {'dataset': {}, 'model': {}, 'pipeline': {}} after overrides;
    source: the config file; overridden: dotted keys set on the command line.
    """
    try:
        check_model(cfg['model'])
        check_pipeline(cfg['pipeline'])
        check_demo_data(cfg['dataset'])
        check_convert_workers(cfg['dataset'])
    except (KeyError, TypeError, ValueError) as error:
        message = error.args[0] if error.args else str(error)
        raise ConfigError(f"{where(message, source, overridden)}: "
                          f"{message}") from None


def where(message, source, overridden):
    """The file, or the command-line option, that set the key of `message`."""
    match = _KEY.search(message)
    key = match.group(0) if match else None
    for dotted in overridden:
        if key is not None and (key == dotted or key.startswith(dotted + '.')
                                or dotted.startswith(key + '.')):
            return f"--{dotted} (command line, config {source})"
    return str(source)


def _registered(kind, name):
    """The class registered under `name`, or None when it is not."""
    import ncm_plugin  # noqa: F401  (fills the registries)
    from open3d._ml3d.utils import get_module
    try:
        return get_module(kind, name, 'torch')
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
