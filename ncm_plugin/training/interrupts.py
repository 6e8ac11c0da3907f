"""SIGINT/SIGTERM/SIGUSR1 during training: finish the step, save, exit.

A cluster that preempts a job sends SIGTERM (torchrun forwards it to every
rank) or, with SLURM's `--signal=USR1@SECONDS`, SIGUSR1 some time before
the end of the allocation (the job script then requeues it); a user presses
Ctrl-C. Either way the training loop should stop at
the next step boundary and write a checkpoint rather than die mid-step.
`StopRequest` records the first signal; a second one gets the default
behaviour (a second Ctrl-C interrupts at once; the checkpoint write is
atomic, so that is safe too).
"""
import contextlib
import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Set by SIGINT/SIGTERM/SIGUSR1 while `installed()` is active."""

    def __init__(self):
        self.signum = None

    @property
    def requested(self):
        return self.signum is not None

    @property
    def exit_code(self):
        """The shell's convention for death by a signal: 128 + its number."""
        return 128 + self.signum if self.requested else 0

    def _handle(self, signum, frame):
        self.signum = signum
        for sig in SIGNALS:  # a second signal acts at once
            signal.signal(sig, self._previous[sig])
        log.warning("%s received: stopping after the current step and saving "
                    "a checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name)

    @contextlib.contextmanager
    def installed(self):
        """Catch SIGINT/SIGTERM/SIGUSR1 in the block (main thread only; elsewhere
        signals cannot be caught and the block runs without)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
        for sig in SIGNALS:
            signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig in SIGNALS:
                signal.signal(sig, self._previous[sig])


# Test hook: NCM_TEST_SIGNAL_AT_STEP=WHAT:EPOCH:STEP makes the run send itself
# SIGKILL (KILL), SIGTERM (TERM) or SIGUSR1 (USR1), stop responding (HANG) or
# SIGKILL its first DataLoader worker (KILL_WORKER) right after training
# step STEP of epoch EPOCH, so that tests aim at a chosen step rather than at
# a wall-clock moment.
STEP_HOOK_ENV = 'NCM_TEST_SIGNAL_AT_STEP'
HOOK_ACTIONS = ('KILL', 'TERM', 'USR1', 'HANG', 'KILL_WORKER')


class StepHook:
    """The NCM_TEST_SIGNAL_AT_STEP hook; does nothing when the variable is
    not set."""

    def __init__(self, environ=None):
        value = (os.environ if environ is None else environ).get(STEP_HOOK_ENV)
        self.action = None
        if value:
            action, epoch, step = value.split(':')
            if action not in HOOK_ACTIONS:
                raise ValueError(f"{STEP_HOOK_ENV}={value}: the action is one "
                                 f"of {HOOK_ACTIONS}")
            self.action, self.at = action, (int(epoch), int(step))

    def after_step(self, epoch, step, loader=None):
        if self.action is None or (epoch, step) != self.at:
            return
        log.warning("%s: %s after step %d of epoch %d", STEP_HOOK_ENV,
                    self.action, step, epoch)
        if self.action == 'HANG':
            while True:
                time.sleep(60)
        if self.action == 'KILL_WORKER':
            # The loader's live iterator (persistent workers) holds them.
            worker = loader._iterator._workers[0]
            log.warning("%s: killing DataLoader worker pid %d", STEP_HOOK_ENV,
                        worker.pid)
            os.kill(worker.pid, signal.SIGKILL)
            return
        os.kill(os.getpid(), getattr(signal, f'SIG{self.action}'))
