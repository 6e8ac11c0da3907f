"""Config files: where the shipped ones live, how one is found and read.

Low in the package so that every layer (training, evaluation, tools) can load
a config without importing the command line. A config is one YAML file with
the sections of Open3D-ML: dataset, model, pipeline.
"""
import logging
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'
SECTIONS = ('dataset', 'model', 'pipeline')

log = logging.getLogger(__name__)


def shipped_configs():
    """Names of the configs shipped with the package."""
    return sorted(p.name for p in CONFIG_DIR.glob('*.yml'))


def resolve_config(name):
    """A config path, or a bare name looked up in configs/."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / path.name
    if candidate.is_file():
        return candidate
    known = shipped_configs()
    raise FileNotFoundError(f"config {name!r} not found, neither as a path nor "
                            f"in {CONFIG_DIR} (available: {known})")


def load_config(path):
    """YAML config -> {'dataset': {}, 'model': {}, 'pipeline': {}}.

    Raises ValueError naming the file (and for a syntax error the line and
    column) when the file is not YAML or not a mapping of the sections.
    """
    with open(path) as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: {yaml_problem(error)}") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a config is a mapping of the sections "
                         f"{list(SECTIONS)}, but the file holds a "
                         f"{type(cfg).__name__}")
    missing = [s for s in SECTIONS if not isinstance(cfg.get(s), dict)]
    if missing:
        raise ValueError(f"{path}: missing section(s) {missing}")
    extra = sorted(set(cfg) - set(SECTIONS))
    if extra:
        raise ValueError(f"{path}: unknown top-level key(s) {extra}; a config "
                         f"has only {list(SECTIONS)}")
    return cfg


def yaml_problem(error):
    """'line 3, column 9: YAML syntax error: mapping values are not allowed
    here' for PyYAML's error (whose message spans several lines)."""
    mark = getattr(error, 'problem_mark', None)
    problem = getattr(error, 'problem', None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ''
    return f"{where}YAML syntax error: {problem}"


def apply_overrides(cfg, overrides, source):
    """Set dotted keys in place; warn when a key is new to the config."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split('.')
        node = cfg
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--{dotted}: {part!r} is not a section in "
                                 f"{source}")
            node = child
        if leaf not in node:
            log.warning("--%s is not in %s; adding it", dotted, source)
        node[leaf] = value
    return cfg


