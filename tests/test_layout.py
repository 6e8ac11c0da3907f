"""The package tree shows the architecture: layers import one way, the math
stays free of framework glue."""
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / 'ncm_plugin'

# Lowest first; a module may import its own layer and the ones below it.
LAYERS = (
    ('config',),
    ('ncm', 'losses', 'models', 'scene_target', 'datasets'),
    ('evaluation',),
    ('training', 'inference'),
    ('tools',),
)


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(path, source=None):
    """Absolute names of every module the file at `path` (or `source`, as if
    it were that file) imports, at any depth: imports inside functions
    count too."""
    name = module_name(path)
    package = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
    found = []
    source = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append(target)
            # `from . import checkpoints` imports a module too.
            found += [f'{target}.{alias.name}' for alias in node.names]
    return found


def layer_of(module):
    """Layer index of a module of the package, None for the package root and
    for names that are not modules of the package."""
    parts = module.split('.')
    if parts[0] != 'ncm_plugin' or len(parts) == 1:
        return None
    for index, tops in enumerate(LAYERS):
        if parts[1] in tops:
            return index
    return None


def test_every_module_has_a_layer():
    modules = [module_name(p) for p in PACKAGE.rglob('*.py')]
    lost = [m for m in modules if m != 'ncm_plugin' and layer_of(m) is None]
    assert lost == []


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in PACKAGE.rglob('*.py'):
        own = layer_of(module_name(path))
        if own is None:
            continue
        for target in imported_modules(path):
            other = layer_of(target)
            if other is not None and other > own:
                upward.append(f"{module_name(path)} -> {target}")
    assert upward == []


def test_the_math_imports_only_torch():
    """ncm.py: torch and the standard library, no Open3D-ML glue."""
    imports = {m.split('.')[0] for m in imported_modules(PACKAGE / 'ncm.py')}
    assert imports - set(sys.stdlib_module_names) == {'torch'}


def test_layer_check_sees_an_upward_import():
    """The check itself: a relative import from evaluation into training
    resolves to the training layer, above evaluation's."""
    recorder = PACKAGE / 'evaluation' / 'recorder.py'
    targets = imported_modules(recorder, 'from ..training import pipeline\n')
    assert targets == ['ncm_plugin.training', 'ncm_plugin.training.pipeline']
    assert layer_of(targets[1]) > layer_of(module_name(recorder))
