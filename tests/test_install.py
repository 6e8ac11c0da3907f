"""scripts/install.sh installs exactly the wanted Open3D/torch pair and
replaces the other one. The script runs for real, against a fake virtual
environment whose python records every call instead of installing: no
network, no install, the repository's own .venv untouched."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CU126 = 'https://download.pytorch.org/whl/cu126'

FAKE_PYTHON = '''\
#!{python} -I
"""A venv python: records its arguments; `-m pip show NAME` answers
installed for the names in FAKE_INSTALLED; a torch install fails when
FAKE_NO_TORCH is set, or without --extra-index-url FAKE_TORCH_ONLY_FROM."""
import json, os, sys
args = sys.argv[1:]
with open({log!r}, 'a') as log:
    log.write(json.dumps(args) + '\\n')
if args[:3] == ['-m', 'pip', 'show']:
    sys.exit(0 if args[-1] in os.environ.get('FAKE_INSTALLED', '').split() else 1)
if any(a.startswith('torch==') for a in args):
    only = os.environ.get('FAKE_TORCH_ONLY_FROM')
    if os.environ.get('FAKE_NO_TORCH') or (only and only not in args):
        sys.exit(1)
'''


@pytest.fixture
def install(tmp_path):
    """Runs install.sh with a fake venv (and a fake apt-get first on PATH);
    returns (completed process, pip argument lists, apt-get calls); the
    python code install.sh ran with -c is left in install.checks."""
    venv_bin = tmp_path / 'venv' / 'bin'
    venv_bin.mkdir(parents=True)
    log = tmp_path / 'python.log'
    python = venv_bin / 'python'
    python.write_text(FAKE_PYTHON.format(python=sys.executable, log=str(log)))
    python.chmod(0o755)
    tools = tmp_path / 'tools'
    tools.mkdir()
    apt_log = tmp_path / 'apt.log'
    for name, body in (('apt-get', f'echo "$*" >> {apt_log}'), ('sudo', '"$@"')):
        (tools / name).write_text(f'#!/usr/bin/env bash\n{body}\n')
        (tools / name).chmod(0o755)

    def run(*options, installed=(), system_packages=False, **env):
        environ = {k: v for k, v in os.environ.items() if k != 'TORCH_INDEX_URL'}
        environ.update(env, NCM_VENV=str(tmp_path / 'venv'),
                       PATH=f"{tools}{os.pathsep}{environ['PATH']}",
                       FAKE_INSTALLED=' '.join(installed))
        if not system_packages:
            options = ('--no-system-packages', *options)
        done = subprocess.run(['bash', str(REPO / 'scripts' / 'install.sh'), *options],
                              env=environ, capture_output=True, text=True, timeout=30)
        calls = [json.loads(line) for line in log.read_text().splitlines()] \
            if log.exists() else []
        pip = [call[2:] for call in calls if call[:2] == ['-m', 'pip']]
        run.checks = [call[1] for call in calls if call[0] == '-c']
        apt = apt_log.read_text().splitlines() if apt_log.exists() else []
        log.unlink(missing_ok=True)
        apt_log.unlink(missing_ok=True)
        return done, pip, apt
    return run


def torch_install(pip):
    [call] = [call for call in pip if any(a.startswith('torch==') for a in call)]
    return call


def test_cpu_installs_open3d_cpu_and_the_cpu_torch_from_pips_own_indexes(install):
    done, pip, _ = install()
    assert done.returncode == 0, done.stderr
    assert pip == [['install', '-q', '--upgrade', 'pip'],
                   ['show', '-q', 'open3d'],
                   ['install', '-q', 'torch==2.13.0+cpu'],
                   ['install', '-q', '-e', '.[cpu,test]']]


def test_cuda_installs_open3d_and_the_cu126_torch_from_pytorchs_index(install):
    done, pip, _ = install('--cuda')
    assert done.returncode == 0, done.stderr
    assert pip == [['install', '-q', '--upgrade', 'pip'],
                   ['show', '-q', 'open3d-cpu'],
                   ['install', '-q', 'torch==2.13.0+cu126', '--extra-index-url', CU126],
                   ['install', '-q', '-e', '.[cuda,test]']]


def test_cuda_over_cpu_uninstalls_open3d_cpu_before_installing(install):
    done, pip, _ = install('--cuda', installed=['open3d-cpu', 'torch'])
    assert done.returncode == 0, done.stderr
    uninstall = pip.index(['uninstall', '-y', 'open3d-cpu', 'open3d'])
    assert uninstall < pip.index(torch_install(pip))
    assert uninstall < pip.index(['install', '-q', '-e', '.[cuda,test]'])
    # The local label: a torch 2.13.0+cpu does not satisfy it.
    assert 'torch==2.13.0+cu126' in torch_install(pip)


def test_cpu_over_cuda_uninstalls_open3d(install):
    done, pip, _ = install('--cpu', installed=['open3d', 'torch'])
    assert done.returncode == 0, done.stderr
    assert ['uninstall', '-y', 'open3d', 'open3d-cpu'] in pip
    assert 'torch==2.13.0+cpu' in torch_install(pip)


@pytest.mark.parametrize('variant', ['--cpu', '--cuda'])
@pytest.mark.parametrize('form', ['option', 'option=', 'environment'])
def test_the_torch_index_can_be_named_for_either_variant(install, variant, form):
    url = 'https://mirror.example/torch'
    options = {'option': ['--torch-index', url], 'option=': [f'--torch-index={url}'],
               'environment': []}[form]
    env = {'TORCH_INDEX_URL': url} if form == 'environment' else {}
    done, pip, _ = install(variant, *options, **env)
    assert done.returncode == 0, done.stderr
    assert torch_install(pip)[-2:] == ['--extra-index-url', url]


def test_the_option_wins_over_the_environment(install):
    done, pip, _ = install('--torch-index', 'https://option.example',
                           TORCH_INDEX_URL='https://environment.example')
    assert done.returncode == 0, done.stderr
    assert torch_install(pip)[-2:] == ['--extra-index-url', 'https://option.example']


def test_an_empty_index_leaves_cuda_to_pips_own_configuration(install):
    done, pip, _ = install('--cuda', '--torch-index', '')
    assert done.returncode == 0, done.stderr
    assert torch_install(pip) == ['install', '-q', 'torch==2.13.0+cu126']


def test_cpu_falls_back_to_pytorchs_cpu_index_when_pip_has_no_cpu_build(
        install):
    done, pip, _ = install(FAKE_TORCH_ONLY_FROM='https://download.pytorch.org/whl/cpu')
    assert done.returncode == 0, done.stderr
    tries = [call for call in pip if 'torch==2.13.0+cpu' in call]
    assert tries == [['install', '-q', 'torch==2.13.0+cpu'],
                     ['install', '-q', 'torch==2.13.0+cpu', '--extra-index-url',
                      'https://download.pytorch.org/whl/cpu']]
    assert 'trying https://download.pytorch.org/whl/cpu' in done.stderr


def test_a_torch_pip_cannot_find_names_the_index_option(install):
    done, pip, _ = install(FAKE_NO_TORCH='1')
    assert done.returncode == 1
    assert '--torch-index' in done.stderr
    assert 'https://download.pytorch.org/whl/cpu' in done.stderr
    assert not any('-e' in call for call in pip)


@pytest.mark.parametrize('options', [['--gpu'], ['--cpu', 'extra'], ['--torch-index']])
def test_a_bad_option_exits_2_with_a_message_before_installing(install, options):
    done, pip, apt = install(*options, system_packages=True)
    assert done.returncode == 2
    assert done.stderr.startswith('install.sh: ')
    assert pip == [] and apt == []


def test_system_packages_come_from_apt_get_unless_skipped(install):
    done, _, apt = install(system_packages=True)
    assert done.returncode == 0, done.stderr
    assert apt[0] == 'update -qq'
    assert apt[1].startswith('install -y -qq libusb-1.0-0 libgl1 libgomp1')
    assert install()[2] == []


@pytest.mark.parametrize('o3d_cuda, torch_cuda, printed', [
    ('', None, 'ok: open3d 0.20.0 (CUDA None) | torch 2.13.0+cpu (CUDA None)'),
    ('12.6', '12.6', 'ok: open3d 0.20.0 (CUDA 12.6) | torch 2.13.0+cu126 (CUDA 12.6)')])
def test_the_final_check_prints_both_cuda_versions(install, tmp_path, o3d_cuda,
                                                   torch_cuda, printed):
    """The check install.sh runs last, run here against stub modules with
    the attributes the real ones have."""
    done, _, _ = install()
    assert done.returncode == 0, done.stderr
    [check] = install.checks
    stubs = tmp_path / 'stubs'
    (stubs / 'open3d' / 'ml').mkdir(parents=True)
    (stubs / 'open3d' / '__init__.py').write_text(
        f"__version__ = '0.20.0'\n_build_config = {{'CUDA_VERSION': {o3d_cuda!r}}}\n")
    (stubs / 'open3d' / 'ml' / '__init__.py').write_text('')
    (stubs / 'open3d' / 'ml' / 'torch.py').write_text('')
    (stubs / 'torch').mkdir()
    (stubs / 'torch' / '__init__.py').write_text(
        f"__version__ = '2.13.0+{'cu126' if torch_cuda else 'cpu'}'\n"
        f"class version:\n    cuda = {torch_cuda!r}\n")
    (stubs / 'ncm_plugin.py').write_text('')
    ran = subprocess.run([sys.executable, '-S', '-c', check], capture_output=True,
                         text=True, timeout=30, env={'PYTHONPATH': str(stubs)})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == printed
