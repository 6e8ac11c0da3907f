"""--part term: the NCM term on the device, with torch alone (no Open3D).

For each batch shape (batches.py), the products and the term of ncm.py
(`new`) and of the construction before it (column0.py, `column 0`):
- the neighbour sum adjacency @ scores and its gradient against a gather-sum
  reference (slots gathered as [N, K, C] in chunks, masked by a keep mask
  computed here, independently of ncm.py);
- the term's value and gradient, column 0 against new against NCMLoss.term;
- forward + backward time of the term (median; CUDA events on a GPU);
- peak memory of forward + backward (CUDA);
- NCMLoss.term on float16 / bfloat16 logits under autocast: finite, and
  equal to the float32 term of the same values (it computes in float32);
- no host-device synchronisation (torch.cuda.set_sync_debug_mode 'error'),
  for NCMLoss.term and for ncm.py's products alone; a sync names its line.
"""
import os
import re
import statistics
import time
import traceback
import warnings
from collections import namedtuple
from pathlib import Path

import torch

from ... import ncm
from ...losses import NCMLoss, class_indices
from . import column0
from .batches import Shape, generate
from .report import Result, not_run

SEED = 20261201
# KPConv layer-0 batches of S3DIS/ScanNet/outdoor scenes: 50k to 500k
# points, 16 to 90 slots, several clouds, 13 and 20 classes.
SHAPES = (Shape(50_000, 16, 4, 13), Shape(120_000, 90, 6, 13),
          Shape(250_000, 40, 8, 20, ignored=(0,)),
          Shape(500_000, 60, 10, 20, ignored=(0,)))
TINY_SHAPES = (Shape(2_000, 24, 3, 13), Shape(2_000, 16, 2, 20, ignored=(0,)))
# Relative deviations allowed: products and terms of float32 sums.
TOLERANCE = 1e-4
# Gradients of float16/bfloat16 logits, relative to the largest one.
HALF_GRAD_TOLERANCE = 1e-2
# GradScaler's initial scale: what pipeline.amp multiplies the loss by
# before the backward (small float16 gradients would flush to zero).
LOSS_SCALE = 2.0 ** 16
# Elements a gather chunk holds at most ([rows, K, C] float32: 256 MiB).
CHUNK_ELEMENTS = 1 << 26

# transpose_csr: the matrix the backward multiplies, for its row lengths
# (None if ncm.py no longer has one).
Construction = namedtuple('Construction', 'name neighbor_matrix '
                          'sparse_product cooccurrence_from_matrix '
                          'transpose_csr')
NEW = Construction('new', ncm.neighbor_matrix, ncm.sparse_product,
                   ncm.cooccurrence_from_matrix,
                   getattr(ncm, 'transpose_csr', None))
COLUMN0 = Construction('column 0', column0.neighbor_matrix,
                       column0.sparse_product,
                       column0.cooccurrence_from_matrix,
                       column0.transpose_csr)


# -- reference ---------------------------------------------------------------
def valid_points(batch):
    """[N] bool, or None when the shape ignores no label (as NCMLoss)."""
    if not batch.shape.ignored:
        return None
    return class_indices(batch.labels, batch.shape.classes,
                         batch.shape.ignored)[1]


def kept_slots(batch, valid):
    """[N, K] bool: the slots that count, from the definition (a real
    neighbour, not the point itself, in the point's cloud, both valid)."""
    neighbors, n = batch.neighbors, batch.shape.points
    device = neighbors.device
    cloud = torch.repeat_interleave(
        torch.arange(len(batch.lengths), device=device), batch.lengths)
    padded_cloud = torch.cat([cloud, cloud.new_full((1,), -1)])
    keep = ((neighbors < n) & (padded_cloud[neighbors] == cloud.unsqueeze(1))
            & (neighbors != torch.arange(n, device=device).unsqueeze(1)))
    if valid is not None:
        keep &= valid.unsqueeze(1) & torch.cat([valid, valid.new_zeros(1)])[
            neighbors]
    return keep


def row_chunks(batch, width):
    rows = max(1, CHUNK_ELEMENTS // (batch.shape.slots * width))
    for start in range(0, batch.shape.points, rows):
        yield slice(start, start + rows)


def gather_sum(scores, batch, keep):
    """neighbour_sum[i] = sum of scores[j] over the kept slots j of row i."""
    padded = torch.cat([scores, scores.new_zeros(1, scores.shape[1])])
    out = torch.empty_like(scores)
    for rows in row_chunks(batch, scores.shape[1]):
        slots = torch.where(keep[rows], batch.neighbors[rows],
                            batch.shape.points)
        out[rows] = padded[slots].sum(dim=1)
    return out


def gather_sum_gradient(upstream, batch, keep):
    """The gradient of sum(gather_sum(s) * upstream) w.r.t. s: each kept
    slot (i, j) adds upstream[i] to row j."""
    n, width = upstream.shape
    grad = upstream.new_zeros(n + 1, width)
    for rows in row_chunks(batch, width):
        slots = torch.where(keep[rows], batch.neighbors[rows], n)
        grad.index_add_(0, slots.reshape(-1), upstream[rows].repeat_interleave(
            batch.shape.slots, dim=0))
    return grad[:n]


def deviation(value, reference):
    """max |value - reference| / max |reference| (float)."""
    scale = reference.detach().abs().max().clamp_min(1e-30)
    return float((value.detach().float() - reference.detach().float()
                  ).abs().max() / scale)


def structure(construction, adjacency):
    """Stored entries, counted pairs, and the row lengths of the matrix the
    backward multiplies (column 0 parks all padding in its row 0)."""
    if adjacency.layout != torch.sparse_csr:
        return {'layout': str(adjacency.layout)}
    figures = {'stored': adjacency.values().numel(),
               'pairs': int(adjacency.values().sum())}
    if construction.transpose_csr is not None:
        crow = construction.transpose_csr(adjacency).crow_indices()
        rows = (crow[1:] - crow[:-1]).float()
        figures.update(longest_backward_row=int(rows.max()),
                       median_backward_row=float(rows.median()))
    return figures


def products(batch):
    """adjacency @ scores and its gradient, both constructions, against
    the gather-sum reference."""
    valid = valid_points(batch)
    keep = kept_slots(batch, valid)
    scores = torch.softmax(batch.logits, dim=1)
    gen = torch.Generator().manual_seed(SEED + 1)
    upstream = torch.randn(scores.shape, generator=gen).to(scores.device)
    reference = gather_sum(scores, batch, keep)
    reference_grad = gather_sum_gradient(upstream, batch, keep)
    figures = {'padding': batch.padding, 'counted_pairs': int(keep.sum())}
    for construction in (NEW, COLUMN0):
        leaf = scores.clone().requires_grad_(True)
        adjacency = construction.neighbor_matrix(batch.neighbors,
                                                 batch.lengths, valid)
        out = construction.sparse_product(adjacency, leaf)
        out.backward(upstream)
        figures[construction.name] = {
            'forward': deviation(out, reference),
            'gradient': deviation(leaf.grad, reference_grad),
            **structure(construction, adjacency)}
    new = figures['new']
    worst = max(new['forward'], new['gradient'])
    before = figures['column 0']
    note = (f"column 0 (before): forward {before['forward']:.2g}, gradient "
            f"{before['gradient']:.2g}")
    return Result(worst < TOLERANCE, worst, figures, note)


# -- the term ----------------------------------------------------------------
def term_with(construction, batch, logits):
    """The NCM term as NCMLoss.term computes it (forward KL, eps 1e-6,
    weight 1, no pooling), with `construction`'s products."""
    classes = batch.shape.classes
    indices, valid = class_indices(batch.labels, classes, batch.shape.ignored)
    with torch.autocast(logits.device.type, enabled=False):
        one_hot = (indices.unsqueeze(1) == torch.arange(
            classes, device=logits.device)).float()
        scores = torch.softmax(logits.float(), dim=1)
        adjacency = construction.neighbor_matrix(
            batch.neighbors, batch.lengths,
            valid if batch.shape.ignored else None)
        target = construction.cooccurrence_from_matrix(one_hot, adjacency,
                                                       batch.lengths)
        prediction = construction.cooccurrence_from_matrix(scores, adjacency,
                                                           batch.lengths)
        return ncm.ncm_kl(target, prediction, 'forward', 1e-6)


def ncm_loss(batch):
    return NCMLoss(batch.shape.classes, batch.shape.ignored, weight=1.0,
                   direction='forward', eps=1e-6)


def term_variants(batch):
    """{name: logits -> term}: both constructions, and the training's."""
    loss = ncm_loss(batch)
    return {
        'new': lambda logits: term_with(NEW, batch, logits),
        'column 0': lambda logits: term_with(COLUMN0, batch, logits),
        'NCMLoss.term': lambda logits: loss.term(
            logits, batch.labels, batch.neighbors, batch.lengths)}


def value_and_gradient(term, logits):
    leaf = logits.detach().clone().requires_grad_(True)
    value = term(leaf)
    value.backward()
    return value.detach(), leaf.grad


def same_term(batch):
    """Column 0 and NCMLoss.term against the new construction."""
    results = {name: value_and_gradient(term, batch.logits)
               for name, term in term_variants(batch).items()}
    new_value, new_grad = results['new']
    figures = {'term': float(new_value)}
    for name in ('column 0', 'NCMLoss.term'):
        value, grad = results[name]
        figures[name] = {'value': deviation(value, new_value),
                         'gradient': deviation(grad, new_grad)}
    worst = max(v for name in ('column 0', 'NCMLoss.term')
                for v in figures[name].values())
    return Result(worst < TOLERANCE, worst, figures)


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def seconds(step, device):
    """Wall time of step(): CUDA events on a GPU, perf_counter else."""
    if device.type != 'cuda':
        start = time.perf_counter()
        step()
        return time.perf_counter() - start
    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
    start.record()
    step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def median_seconds(step, device, budget, most=30):
    """Median of as many repeats as `budget` seconds allow (3 to `most`),
    after one warm-up."""
    step()
    synchronize(device)
    first = seconds(step, device)
    repeats = max(3, min(most, int(budget / max(first, 1e-6))))
    return statistics.median([first] + [seconds(step, device)
                                         for _ in range(repeats - 1)]), repeats


def backward_step(term, logits):
    """forward + backward of term on a fresh gradient."""
    def step():
        logits.grad = None
        term(logits).backward()
    return step


def timing(batch, budget):
    """Forward + backward of the term: new, column 0, NCMLoss.term."""
    device = batch.logits.device
    logits = batch.logits.clone().requires_grad_(True)
    figures = {}
    for name, term in term_variants(batch).items():
        median, repeats = median_seconds(backward_step(term, logits), device,
                                         budget)
        figures[name] = {'ms': 1e3 * median, 'repeats': repeats}
    speedup = figures['column 0']['ms'] / figures['new']['ms']
    return Result(True, {'new_ms': figures['new']['ms'],
                         'column0_over_new': speedup}, figures,
                  f"new is {speedup:.2f}x the speed of column 0")


def peak_memory(batch):
    """CUDA max_memory_allocated of forward + backward, per variant."""
    device = batch.logits.device
    if device.type != 'cuda':
        return not_run('needs CUDA (torch.cuda.max_memory_allocated)')
    logits = batch.logits.clone().requires_grad_(True)
    figures = {}
    for name, term in term_variants(batch).items():
        step = backward_step(term, logits)
        step()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        figures[name] = {'peak_MiB': peak / 2**20,
                         'above_inputs_MiB': (peak - base) / 2**20}
    return Result(True, figures['new']['peak_MiB'], figures)


def autocast_term(batch, dtype):
    """NCMLoss.term on `dtype` logits under autocast, backward of the
    loss scaled as pipeline.amp's GradScaler scales it."""
    device = batch.logits.device
    loss = ncm_loss(batch)

    def term(logits):
        return loss.term(logits, batch.labels, batch.neighbors, batch.lengths)

    half = batch.logits.to(dtype).requires_grad_(True)
    with torch.autocast(device.type, dtype=dtype):
        value = term(half)
    (value * LOSS_SCALE).backward()
    same = half.detach().float().requires_grad_(True)
    reference = term(same)
    (reference * LOSS_SCALE).backward()
    exact = term(batch.logits)
    finite = bool(torch.isfinite(value)) and bool(
        torch.isfinite(half.grad).all())
    flushed = float(((half.grad == 0) & (same.grad != 0)).float().mean())
    figures = {'term_dtype': str(value.dtype).replace('torch.', ''),
               'grad_dtype': str(half.grad.dtype).replace('torch.', ''),
               'value_vs_float32_same_logits': deviation(value, reference),
               'grad_vs_float32_same_logits': deviation(half.grad, same.grad),
               'grads_flushed_to_zero': flushed,
               'value_vs_float32_logits': deviation(value, exact)}
    ok = (finite and value.dtype == torch.float32 and
          figures['value_vs_float32_same_logits'] < TOLERANCE and
          figures['grad_vs_float32_same_logits'] < HALF_GRAD_TOLERANCE)
    note = '' if finite else 'not finite'
    return Result(ok, figures['value_vs_float32_same_logits'], figures, note)


# -- host-device synchronisation ---------------------------------------------
PACKAGE = Path(ncm.__file__).resolve().parent


def sync_site(frames, error_text=''):
    """'file:line in function: code' of the innermost frame of the plugin
    (outside this check), plus the op when the C++ trace names it."""
    own = [f for f in frames if Path(f.filename).resolve().is_relative_to(
        PACKAGE) and 'gpu_check' not in f.filename]
    frame = (own or list(frames))[-1]
    where = (f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}: "
             f"`{(frame.line or '').strip()}`")
    op = re.search(r'at::_ops::(\w+)::', error_text)
    return where + (f" (op {op.group(1)})" if op else '')


def first_sync(fn, leaf):
    """None, or where fn's forward or backward first synchronised, under
    torch.cuda.set_sync_debug_mode('error') (restored afterwards)."""
    previous = torch.cuda.get_sync_debug_mode()
    leaf.grad = None
    phase = 'forward'
    try:
        torch.cuda.set_sync_debug_mode('error')
        value = fn(leaf)
        phase = 'backward'
        value.backward()
    except RuntimeError as error:
        if 'synchroniz' not in str(error):
            raise
        return f"{phase}: " + sync_site(
            traceback.extract_tb(error.__traceback__), str(error))
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return None


def every_sync(fn, leaf):
    """Every place fn's forward + backward synchronises (mode 'warn')."""
    previous = torch.cuda.get_sync_debug_mode()
    sites = []

    def record(message, category, filename, lineno, file=None, line=None):
        if 'synchroniz' in str(message):
            sites.append(sync_site(traceback.extract_stack()[:-1]))

    leaf.grad = None
    with warnings.catch_warnings():
        warnings.simplefilter('always')
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode('warn')
        try:
            fn(leaf).backward()
        except RuntimeError as error:  # the first site is known already
            sites.append(f"(listing stopped: {str(error)[:200]})")
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return list(dict.fromkeys(sites))


def no_syncs(batch):
    """NCMLoss.term, and ncm.py's products alone (inputs prepared), of
    both constructions: forward + backward without a host-device sync."""
    device = batch.logits.device
    if device.type != 'cuda':
        return not_run('needs CUDA (torch.cuda.set_sync_debug_mode)')
    # The op behind a sync error, from the C++ trace (read at the first
    # error of the process).
    os.environ.setdefault('TORCH_SHOW_CPP_STACKTRACES', '1')
    classes = batch.shape.classes
    indices, valid = class_indices(batch.labels, classes, batch.shape.ignored)
    one_hot = (indices.unsqueeze(1) == torch.arange(classes, device=device)
               ).float()
    valid = valid if batch.shape.ignored else None
    loss = ncm_loss(batch)

    def products_only(construction):
        def term(logits):
            adjacency = construction.neighbor_matrix(
                batch.neighbors, batch.lengths, valid)
            target = construction.cooccurrence_from_matrix(
                one_hot, adjacency, batch.lengths)
            prediction = construction.cooccurrence_from_matrix(
                torch.softmax(logits, dim=1), adjacency, batch.lengths)
            return ncm.ncm_kl(target, prediction)
        return term

    paths = {'NCMLoss.term': lambda logits: loss.term(
                 logits, batch.labels, batch.neighbors, batch.lengths),
             'ncm.py (new)': products_only(NEW),
             'ncm.py (column 0)': products_only(COLUMN0)}
    leaf = batch.logits.clone().requires_grad_(True)
    figures = {}
    for name, fn in paths.items():
        fn(leaf).backward()  # warm-up: handles and caches, outside the mode
        torch.cuda.synchronize()
        site = first_sync(fn, leaf)
        figures[name] = ('none' if site is None else
                         {'first': site, 'all': every_sync(fn, leaf)})
    failed = [name for name in ('NCMLoss.term', 'ncm.py (new)')
              if figures[name] != 'none']
    note = '; '.join(f"{name}: {figures[name]['first']}" for name in failed)
    return Result(not failed, len(failed), figures, note)


# -- the part ----------------------------------------------------------------
def run(report, device, tiny):
    """Every check on every shape (the tiny ones with `tiny`)."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(SEED)
    budget = 0.05 if tiny else 1.0
    for shape in TINY_SHAPES if tiny else SHAPES:
        report.progress(f"term: generating a batch of {shape}")
        batch = generate(shape, gen).to(device)
        checks = (
            ('products vs gather-sum', products),
            ('column 0 = new = NCMLoss.term', same_term),
            ('forward+backward time', lambda b: timing(b, budget)),
            ('peak memory', peak_memory),
            ('autocast float16', lambda b: autocast_term(b, torch.float16)),
            ('autocast bfloat16', lambda b: autocast_term(b, torch.bfloat16)),
            ('no host-device sync', no_syncs))
        for name, check in checks:
            report.run('term', f"{name}, {shape}", check, batch)
        del batch
        if device.type == 'cuda':
            torch.cuda.empty_cache()
