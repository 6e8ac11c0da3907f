"""A hang becomes an error: when no training or validation step finishes
within `pipeline.step_timeout` seconds, the watchdog prints which epoch, step
and phase it was stuck in and every thread's stack (faulthandler), and ends
the process with EXIT_HUNG. A DataLoader worker that never starts, a
collective that a dead rank never joins, a deadlocked lock: without it a run
on a cluster waits until its allocation runs out, saying nothing.

A DataLoader worker that died (killed, out of memory) is noticed by torch
itself within seconds (the loaders have no `timeout`, so torch polls its
workers): `worker_errors` and `started` turn that into a WorkerDied naming
the loader."""
import contextlib
import faulthandler
import os
import sys
import threading
import time
from itertools import islice

EXIT_HUNG = 124  # as timeout(1)


class Watchdog:
    """`beat(epoch, step, phase)` after every step; a thread of its own checks
    the time since the last beat. `timeout` None or 0: never fires."""

    def __init__(self, timeout, stream=None):
        self.timeout = float(timeout or 0)
        self.stream = stream
        self._where = ('-', 0, 'start-up')
        self._last = time.monotonic()
        self._stopped = threading.Event()
        self._thread = None

    def beat(self, epoch, step, phase):
        self._where = (epoch, step, phase)
        self._last = time.monotonic()

    def __enter__(self):
        if self.timeout > 0:
            self._last = time.monotonic()
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name='ncm-watchdog')
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._stopped.clear()

    def _watch(self):
        while not self._stopped.wait(min(self.timeout, 5.0)):
            if time.monotonic() - self._last > self.timeout:
                self._fire()

    def _fire(self):
        stream = self.stream or sys.stderr
        epoch, step, phase = self._where
        stream.write(
            f"\nncm_plugin watchdog: no {phase} step finished for "
            f"{self.timeout:.0f} s (pipeline.step_timeout): stuck in epoch "
            f"{epoch}, after step {step} of {phase}. The stacks of every "
            f"thread of this process (pid {os.getpid()}) follow; a DataLoader "
            f"worker or another rank may be the one stuck.\n")
        stream.flush()
        faulthandler.dump_traceback(file=stream, all_threads=True)
        stream.flush()
        os._exit(EXIT_HUNG)


class WorkerDied(RuntimeError):
    """A DataLoader worker ended while the loop waited for its batch."""


def worker_errors(batches, count, loader, phase, epoch):
    """The first `count` of `batches` (an iterator of `loader`, see
    `started`); a worker that died (killed, out of memory) becomes a
    WorkerDied naming the loader and what to do."""
    with worker_deaths(loader, phase, epoch):
        yield from islice(batches, count)


def started(loader, phase, epoch):
    """iter(loader), a worker death noticed as the epoch starts its
    persistent workers again becoming a WorkerDied; with workers, they start
    building the epoch's first batches at once."""
    with worker_deaths(loader, phase, epoch):
        return iter(loader)


@contextlib.contextmanager
def worker_deaths(loader, phase, epoch):
    try:
        yield
    except RuntimeError as error:
        if 'DataLoader worker' not in str(error):
            raise
        raise WorkerDied(
            f"the {phase} DataLoader ({loader.num_workers} worker(s)) lost a "
            f"worker in epoch {epoch}: {str(error).splitlines()[0].rstrip('.')}. It may "
            f"have run out of memory (see the system log, e.g. dmesg); fewer "
            f"pipeline.num_workers or a smaller batch use less. Running the "
            f"same command again resumes from the last checkpoint.") from None
