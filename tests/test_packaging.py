"""A wheel, not only a clone: built from the sources, installed into a fresh
environment and run from outside the source tree, it ships its configs and
its commands."""
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ('ncm_plugin', 'scripts')
SOURCE_FILES = ('setup.cfg', 'pyproject.toml', 'README.md')


def copy_sources(into):
    """The files a source distribution holds, without build leftovers."""
    into.mkdir()
    ignore = shutil.ignore_patterns('__pycache__', '*.egg-info')
    for name in SOURCE_DIRS:
        shutil.copytree(REPO / name, into / name, ignore=ignore)
    for name in SOURCE_FILES:
        shutil.copy(REPO / name, into / name)
    return into


def run(command, cwd):
    done = subprocess.run(list(map(str, command)), cwd=cwd, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """(python, bin folder, site-packages) of a fresh venv holding only the
    wheel; torch and Open3D come from this environment (a .pth line)."""
    tmp = tmp_path_factory.mktemp('wheel')
    sources = copy_sources(tmp / 'src')
    run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
         '--no-build-isolation', '-q', '-w', tmp / 'dist', sources], cwd=tmp)
    wheel, = (tmp / 'dist').glob('ncm_plugin-*.whl')
    venv = tmp / 'venv'
    run([sys.executable, '-m', 'venv', '--without-pip', venv], cwd=tmp)
    python = venv / 'bin' / 'python'
    run([sys.executable, '-m', 'pip', '--python', python, 'install', '-q',
         '--no-deps', wheel], cwd=tmp)
    purelib = Path(run([python, '-c', 'import sysconfig; '
                        'print(sysconfig.get_paths()["purelib"])'],
                       cwd=tmp).strip())
    ours = sysconfig.get_paths()['purelib']
    (purelib / 'host_packages.pth').write_text(
        '\n'.join([ours, *site.getsitepackages()]) + '\n')
    elsewhere = tmp / 'elsewhere'
    elsewhere.mkdir()
    return python, venv / 'bin', purelib, elsewhere


def test_the_package_is_imported_from_the_wheel(installed):
    python, _, purelib, elsewhere = installed
    location = run([python, '-c', 'import ncm_plugin; print(ncm_plugin.__file__)'],
                   cwd=elsewhere)
    assert Path(location.strip()).is_relative_to(purelib)


def test_the_wheel_ships_every_config(installed):
    python, _, purelib, elsewhere = installed
    shipped = sorted(p.name for p in (purelib / 'ncm_plugin' / 'configs').glob('*.yml'))
    assert shipped == sorted(p.name for p in (REPO / 'ncm_plugin' / 'configs').glob('*.yml'))
    for name in shipped:
        assert yaml.safe_load((purelib / 'ncm_plugin' / 'configs' / name).read_text()) \
            == yaml.safe_load((REPO / 'ncm_plugin' / 'configs' / name).read_text())


def test_the_run_command_is_installed(installed):
    _, bin_dir, _, elsewhere = installed
    usage = run([bin_dir / 'ncm-run', 'torch', '-c', 'ncm_kpconv_demo.yml', '--help'],
                cwd=elsewhere)
    assert usage.startswith('usage: ncm-run')


def test_every_shipped_config_checks_by_its_bare_name(installed):
    python, _, purelib, elsewhere = installed
    check = ('import sys\n'
             'from ncm_plugin.config import shipped_configs\n'
             'from ncm_plugin.tools.runner import main\n'
             'for name in shipped_configs():\n'
             '    main(["torch", "-c", name, "--check"])\n')
    lines = run([python, '-c', check], cwd=elsewhere).splitlines()
    configs = sorted((purelib / 'ncm_plugin' / 'configs').glob('*.yml'))
    assert lines == [f"{path}: config OK" for path in configs]


def entry_module(text):
    """The module whose main() a wrapper or a console script runs."""
    found = re.findall(r'^from (ncm_plugin[\w.]*) import main', text, re.M)
    assert len(found) == 1, text
    return found[0]


def test_every_script_has_a_console_command(installed):
    _, bin_dir, _, _ = installed
    scripts = {entry_module(p.read_text()) for p in (REPO / 'scripts').glob('*.py')}
    commands = {entry_module(p.read_text()) for p in bin_dir.glob('ncm-*')}
    assert commands == scripts
