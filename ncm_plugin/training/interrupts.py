"""SIGINT/SIGTERM during training: finish the step, save, exit.

A cluster that preempts a job sends SIGTERM (torchrun forwards it to every
rank), a user presses Ctrl-C. Either way the training loop should stop at
the next step boundary and write a checkpoint rather than die mid-step.
`StopRequest` records the first signal; a second one gets the default
behaviour (a second Ctrl-C interrupts at once; the checkpoint write is
atomic, so that is safe too).
"""
import contextlib
import logging
import signal
import threading

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by SIGINT/SIGTERM while `installed()` is active."""

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
        """Catch SIGINT/SIGTERM in the block (main thread only; elsewhere
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
