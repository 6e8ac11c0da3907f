"""pipeline.step_timeout: a run that stops making steps ends with an error
naming where it was stuck and every thread's stack, instead of waiting for
ever."""
import os

from ncm_plugin.training.interrupts import STEP_HOOK_ENV
from ncm_plugin.training.watchdog import EXIT_HUNG
from tiny_training import start_run, write_cached_s3dis, write_tiny_config


def test_a_stuck_step_ends_the_run_with_the_stacks(tmp_path):
    rooms = write_cached_s3dis(tmp_path / 'rooms', areas=(1, 5), rooms=1)
    config = write_tiny_config(tmp_path / 'run.yml', rooms, tmp_path / 'logs',
                               max_epoch=3, step_timeout=5)
    log_path = tmp_path / 'run.log'
    run = start_run(config, tmp_path, log_path,
                    env={**os.environ, STEP_HOOK_ENV: 'HANG:1:1'})
    assert run.wait(timeout=120) == EXIT_HUNG
    text = log_path.read_text()
    assert ('no training step finished for 5 s (pipeline.step_timeout): '
            'stuck in epoch 1, after step 1 of training') in text
    # faulthandler's dump: the main thread, stuck in the hook's sleep.
    assert 'Current thread' in text or 'Thread 0x' in text
    assert 'in after_step' in text
    assert not list((tmp_path / 'logs').rglob('ckpt_00001.pth'))
