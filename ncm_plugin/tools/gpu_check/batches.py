"""Stacked batches with the shape of KPConv's layer-0 neighbour lists,
generated on the spot from one seeded torch generator (no recorded data).

A KPConv radius list of a point holds the point itself first, then its
neighbours within the radius, and is padded with the shadow index N to the
longest list of the batch: about 70 % of the slots of a layer-0 batch are
padding (review gpu-2026-12-01 §5). Here a row gets 1 + round((K-1) u^2.33)
real slots (u uniform: 30 % on average, a few rows full), its neighbours are
distinct indices near its own (a stacked batch sorted along a space-filling
curve keeps neighbours close in index), in random slot order; a neighbour
past either end of the batch becomes the shadow, and one past its own
cloud's end stays (the NCM drops it). Labels come in runs of ~150 points
(spatially coherent classes), logits lean towards the label.

Generated on the CPU, so that a batch is the same whatever the device.
"""
from dataclasses import dataclass

import torch

# u ** SKEW has mean 1 / (1 + SKEW): 30 % real slots.
SKEW = 2.33
LABEL_RUN = 150


@dataclass(frozen=True)
class Shape:
    """points N, neighbour slots K, clouds B, classes C; ignored: dataset
    labels left out (each frees a label value: labels span C + len(ignored)
    values, as ScanNet's 0 = unlabelled beside its 20 classes)."""
    points: int
    slots: int
    clouds: int
    classes: int
    ignored: tuple = ()

    def __str__(self):
        ignored = f", ignored {list(self.ignored)}" if self.ignored else ''
        return (f"{self.points // 1000}k pts x {self.slots} slots, "
                f"{self.clouds} clouds, {self.classes} classes{ignored}")


@dataclass
class Batch:
    """logits [N, C] float32, labels [N] dataset labels, neighbors [N, K]
    (index N = none), lengths [B]."""
    shape: Shape
    logits: torch.Tensor
    labels: torch.Tensor
    neighbors: torch.Tensor
    lengths: torch.Tensor

    def to(self, device):
        return Batch(self.shape, *(t.to(device) for t in (
            self.logits, self.labels, self.neighbors, self.lengths)))

    @property
    def padding(self):
        """Share of the neighbour slots that hold the shadow index."""
        return float((self.neighbors == self.shape.points).float().mean())


def cloud_lengths(shape, gen):
    """[B] uneven cloud sizes (0.5x to 1.5x the mean) summing to N."""
    weights = 0.5 + torch.rand(shape.clouds, generator=gen)
    lengths = (shape.points * weights / weights.sum()).long()
    lengths[-1] += shape.points - int(lengths.sum())
    return lengths


def neighbor_lists(shape, gen):
    """[N, K] long: self first, then distinct nearby indices, then shadows."""
    n, k = shape.points, shape.slots
    real = 1 + ((k - 1) * torch.rand(n, generator=gen) ** SKEW).round().long()
    # Strictly increasing offsets (gaps of 1 to 3), centred on the middle of
    # the row's real ones, then shifted past 0 so that none is the point.
    gaps = torch.randint(1, 4, (n, k - 1), generator=gen)
    positions = torch.cumsum(gaps, 1)
    middle = ((real - 1) // 2).clamp(max=k - 2).unsqueeze(1)
    offsets = positions - positions.gather(1, middle)
    offsets = torch.where(offsets >= 0, offsets + 1, offsets)
    others = torch.arange(n).unsqueeze(1) + offsets
    slot = torch.arange(1, k).unsqueeze(0)
    others = torch.where((slot < real.unsqueeze(1)) & (others >= 0) &
                         (others < n), others, torch.full_like(others, n))
    # Random order of the real slots, shadows last (as a padded list).
    keys = torch.rand(n, k - 1, generator=gen) + (others == n).float() * 2
    others = others.gather(1, torch.argsort(keys, dim=1))
    return torch.cat([torch.arange(n).unsqueeze(1), others], dim=1)


def labels_and_logits(shape, gen):
    """Dataset labels [N] in runs (ignored ones included) and logits [N, C]
    that favour the label's class."""
    n = shape.points
    values = shape.classes + len(shape.ignored)
    starts = torch.rand(n, generator=gen) < 1 / LABEL_RUN
    run = torch.cumsum(starts.long(), 0)
    run_label = torch.randint(0, values, (int(run[-1]) + 1,), generator=gen)
    labels = run_label[run]
    # The label's logit column, as class_indices maps it (ignored: none).
    ignored = torch.tensor(sorted(shape.ignored), dtype=torch.long)
    column = labels - (labels.unsqueeze(1) > ignored).sum(1) if len(ignored) \
        else labels
    hit = ~torch.isin(labels, ignored) if len(ignored) else \
        torch.ones(n, dtype=torch.bool)
    logits = 1.5 * torch.randn(n, shape.classes, generator=gen)
    rows = torch.arange(n)[hit]
    logits[rows, column[hit].clamp(max=shape.classes - 1)] += 2.0
    return labels, logits


def generate(shape, gen):
    """A Batch of `shape` on the CPU, drawn from `gen`."""
    lengths = cloud_lengths(shape, gen)
    neighbors = neighbor_lists(shape, gen)
    labels, logits = labels_and_logits(shape, gen)
    return Batch(shape, logits, labels, neighbors, lengths)
