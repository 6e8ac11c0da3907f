"""A stop request by signal: SIGINT, SIGTERM and SLURM's pre-emption signal
SIGUSR1 all stop at the next step with a checkpoint."""
import os
import signal

import pytest

from ncm_plugin.training.interrupts import StopRequest


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM,
                                    signal.SIGUSR1])
def test_a_stop_signal_is_recorded_and_gives_the_shell_exit_code(signum):
    stop = StopRequest()
    with stop.installed():
        os.kill(os.getpid(), signum)
    assert stop.requested and stop.exit_code == 128 + signum
