"""What a training or validation epoch adds up, kept on the device.

Reading a loss value (`.item()`, `float()`) or moving scores to the host
every step makes the host wait for the device at every step. Here the loss
terms, the first step at which each became non-finite, and the confusion
matrix are accumulated as device tensors, and read by `check()` every few
steps and by `means()` / `confusion()` once an epoch.
"""
import time

import torch

NEVER = torch.iinfo(torch.int64).max


class NonFiniteLoss(FloatingPointError):
    """A loss term became NaN or infinite."""


class EpochTotals:
    """Sums of the loss terms and the confusion matrix of one epoch."""

    def __init__(self, num_classes, device, phase, epoch):
        self.num_classes, self.device = num_classes, device
        self.phase, self.epoch = phase, epoch
        self.sums, self.first_bad = {}, {}
        self.steps = 0
        # Steps whose batch held no labelled point: not added (see declare).
        self.unlabelled_steps = 0
        self.matrix = torch.zeros(num_classes * num_classes, dtype=torch.int64,
                                  device=device)

    def add(self, step, terms):
        """terms {name: scalar tensor} of step `step` (no host sync)."""
        self.declare(terms)
        for name, value in terms.items():
            value = torch.as_tensor(value, device=self.device).detach()
            value = value.to(torch.float64).reshape(())
            self.sums[name] += value
            bad = torch.where(torch.isfinite(value), NEVER, step)
            self.first_bad[name] = torch.minimum(self.first_bad[name], bad)
        self.steps += 1

    def declare(self, names):
        """Terms that exist even if no step adds them (a rank whose every
        step was unlabelled reduces the same terms as the others)."""
        for name in names:
            if name not in self.sums:
                self.sums[name] = torch.zeros((), dtype=torch.float64,
                                              device=self.device)
                self.first_bad[name] = torch.full((), NEVER, dtype=torch.int64,
                                                  device=self.device)

    def add_predictions(self, scores, labels):
        """scores [N, C], labels [N] (label indices) of a step's valid points."""
        cells = labels.long() * self.num_classes + scores.argmax(dim=1)
        # A scatter, not bincount (which reads the largest value on the host).
        self.matrix.index_add_(0, cells, torch.ones_like(cells))

    def check(self):
        """Raise NonFiniteLoss naming the epoch, step and term when a term
        was not finite at some step so far (one host sync)."""
        if not self.first_bad:
            return
        names = list(self.first_bad)
        steps = torch.stack([self.first_bad[n] for n in names]).tolist()
        bad = [(step, name) for step, name in zip(steps, names) if step != NEVER]
        if bad:
            step, name = min(bad)
            raise NonFiniteLoss(
                f"the {name} loss term is not finite at {self.phase} step "
                f"{step} of epoch {self.epoch}; the run stops without saving "
                f"a checkpoint of the model it made (its last checkpoint is "
                f"intact). Lower the learning rate, check the data of that "
                f"step, or raise model.ncm.eps")

    def local_sums(self):
        """[(sum, steps)] per term, sorted by name, as float64 on the host."""
        names = sorted(self.sums)
        return names, [(float(self.sums[n]), self.steps) for n in names]

    def confusion(self):
        """[C, C] int64 numpy confusion matrix (rows: label)."""
        return self.matrix.reshape(self.num_classes, self.num_classes).cpu().numpy()


class EpochTiming:
    """Wall time of an epoch and the part of it the loop waited for the next
    batch (data loading not hidden by the workers)."""

    def __init__(self, phase, epoch):
        self.phase, self.epoch = phase, epoch
        self.start = time.perf_counter()
        self.waiting = 0.0

    def wrap(self, batches):
        """The batches, timing each wait for one."""
        iterator = iter(batches)
        while True:
            before = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waiting += time.perf_counter() - before
            yield batch

    def finish(self, steps):
        seconds = time.perf_counter() - self.start
        return {'phase': self.phase, 'epoch': self.epoch, 'steps': steps,
                'seconds': seconds, 'data_wait_seconds': self.waiting}
