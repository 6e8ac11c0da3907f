"""Bad input to run_pipeline: one line naming the culprit, a non-zero exit,
no traceback, and nothing read before the refusal."""
import os

import pytest
import torch

from ncm_plugin.tools import runner
from ncm_plugin.training import checkpoints
from ncm_plugin.training.devices import (DeviceError, device_report,
                                         require_device)

S3DIS = ['-c', 'ncm_kpconv_s3dis.yml']


def refusal(argv, capsys):
    """(exit code, the last line the user sees, all of stderr) of main."""
    with pytest.raises(SystemExit) as stop:
        runner.main(['torch', *map(str, argv)])
    code = stop.value.code
    err = capsys.readouterr().err
    if isinstance(code, str):  # sys.exit(message): printed as the last line
        return 1, code, err + code
    return code, err.strip().splitlines()[-1], err


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    """Refused before the dataset is built: building fails the test."""
    monkeypatch.chdir(tmp_path)

    def build(*args, **kwargs):
        raise AssertionError("the dataset was built before the refusal")
    monkeypatch.setattr(runner, 'build', build)
    return tmp_path


# (argv, the culprit the last line names) of mistakes refused from the
# config and the command line alone; {tmp} is the test's folder, holding
# bad.yml (a YAML syntax error on line 4) and noise.pth (random bytes).
FAST = {
    'yaml syntax': (['-c', '{tmp}/bad.yml'], '{tmp}/bad.yml: line 4, column'),
    'batch size 0': ([*S3DIS, '--pipeline.batch_size', '0'],
                     'pipeline.batch_size must be >= 1, got 0'),
    'max_epoch abc': ([*S3DIS, '--pipeline.max_epoch', 'abc'],
                      "pipeline.max_epoch must be an int >= 0, got 'abc'"),
    'negative lr': ([*S3DIS, '--pipeline.learning_rate', '-5'],
                    'pipeline.learning_rate must be > 0, got -5'),
    'missing checkpoint': ([*S3DIS, '--ckpt_path', '{tmp}/none.pth'],
                           'model.ckpt_path {tmp}/none.pth: no such file'),
    'not a checkpoint': ([*S3DIS, '--ckpt_path', '{tmp}/noise.pth'],
                         '{tmp}/noise.pth is not a checkpoint'),
    'negative ncm weight': ([*S3DIS, '--model.ncm.weight', '-1'],
                            'model.ncm.weight must be >= 0'),
    'negative workers': ([*S3DIS, '--pipeline.num_workers', '-2'],
                         'pipeline.num_workers must be >= 0'),
    'unknown config': (['-c', 'no_such_config.yml'],
                       "config 'no_such_config.yml' not found"),
    'unknown split': ([*S3DIS, '--split', 'foo'],
                      "argument --split: invalid choice: 'foo'"),
    'pvcnn amp': (['-c', 'ncm_pvcnn_s3dis.yml', '--pipeline.amp', 'true'],
                  'pipeline.amp is not supported by NCMPVCNN'),
}


@pytest.mark.parametrize('case', FAST)
def test_a_mistake_is_one_line_naming_it_before_any_data(case, no_data,
                                                         capsys):
    (no_data / 'bad.yml').write_text('dataset:\n  name: S3DIS\n'
                                     'model: {name: X\npipeline:\n'
                                     '  batch_size: 2\n')
    (no_data / 'noise.pth').write_bytes(os.urandom(512))
    argv, culprit = FAST[case]
    missing = no_data / 'no_data_here'
    code, last, err = refusal([*(arg.format(tmp=no_data) for arg in argv),
                               '--dataset_path', missing], capsys)
    assert code != 0
    assert culprit.format(tmp=no_data) in last and 'Traceback' not in err
    assert not missing.exists()


def test_cuda_without_cuda_is_refused_naming_the_torch_build(no_data, capsys,
                                                            monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    code, last, err = refusal([*S3DIS, '--dataset_path', no_data / 'x',
                               '--device', 'cuda'], capsys)
    assert code != 0 and 'Traceback' not in err
    assert last.startswith('run_pipeline: error: --device (command line')
    assert f'torch {torch.__version__}' in last
    assert 'scripts/install.sh --cuda' in last and '--device cpu' in last


def test_a_readable_checkpoint_passes_the_check(no_data, capsys):
    path = no_data / 'ckpt_00000.pth'
    checkpoints.write_atomic({'epoch': 0, 'model_state_dict': {}}, path)
    assert runner.main(['torch', *S3DIS, '--ckpt_path', str(path),
                        '--check']) is None
    assert 'config OK' in capsys.readouterr().out


def test_a_torch_file_without_weights_is_not_a_checkpoint(no_data, capsys):
    path = no_data / 'list.pth'
    torch.save({'epoch': 3}, path)
    code, last, _ = refusal([*S3DIS, '--ckpt_path', path], capsys)
    assert code != 0
    assert f"{path} is not a checkpoint (a dict without 'model_state_dict'" \
        in last


# -- mistakes found when the data is read: still one line ------------------
def test_a_missing_s3dis_folder_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, last, err = refusal([*S3DIS, '--dataset_path', tmp_path / 'nowhere',
                               '--device', 'cpu'], capsys)
    assert code != 0 and 'Traceback' not in err
    assert f"{tmp_path / 'nowhere'}' does not exist" in last


def test_an_empty_laz_tile_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiles = tmp_path / 'tiles'
    tiles.mkdir()
    (tiles / 'x.laz').write_bytes(b'')
    code, last, err = refusal(['-c', 'ncm_kpconv_lidar.yml', '--dataset_path',
                               tiles, '--device', 'cpu', '--dataset.cache_dir',
                               tmp_path / 'cache'], capsys)
    assert code != 0 and 'Traceback' not in err
    assert f"{tiles / 'x.laz'}: not a readable LAS/LAZ file" in last


# -- checkpoints.load and the device helpers --------------------------------
def test_load_names_the_file_that_is_not_a_checkpoint(tmp_path):
    noise = tmp_path / 'noise.pth'
    noise.write_bytes(b'\x00 not a torch file \xff' * 20)
    with pytest.raises(checkpoints.CheckpointError,
                       match=f'^{noise} is not a checkpoint \\('):
        checkpoints.load(noise)
    torch.save([1, 2], tmp_path / 'list.pth')
    with pytest.raises(checkpoints.CheckpointError, match='holds a list'):
        checkpoints.load(tmp_path / 'list.pth')


def test_cuda_is_refused_when_torch_has_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    for device in ('cuda', 'gpu', 'cuda:1'):
        with pytest.raises(DeviceError) as error:
            require_device(device)
        assert str(error.value).startswith(
            f"device '{device}' asks for CUDA, but the installed torch "
            f"{torch.__version__} ")
        assert 'bash scripts/install.sh --cuda' in str(error.value)
    assert require_device('cpu') == torch.device('cpu')
    assert require_device(None) == torch.device('cpu')


def test_a_cuda_build_without_a_gpu_is_told_apart(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.version, 'cuda', '12.6')
    with pytest.raises(DeviceError, match=r'\(CUDA 12\.6\) finds no GPU'):
        require_device('cuda')


def test_the_device_report_on_the_cpu_names_the_builds():
    report = device_report('cpu')
    assert '\n' not in report
    assert report.startswith('device cpu; ')
    assert f'torch {torch.__version__} (CUDA ' in report
    assert 'open3d ' in report and 'GPU' not in report


def test_the_device_report_on_cuda_names_the_gpu_and_its_memory(monkeypatch):
    """No GPU needed: torch's answers are stood in for."""
    class Properties:
        name = 'NVIDIA H200'
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'get_device_properties',
                        lambda index: Properties())
    monkeypatch.setattr(torch.cuda, 'mem_get_info',
                        lambda index: (100 * 2**30, 140 * 2**30))
    report = device_report('cuda')
    assert report.startswith('device cuda; torch ')
    assert report.endswith('; GPU 0: NVIDIA H200, 140.0 GiB, 100.0 GiB free')
