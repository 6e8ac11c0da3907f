"""The NCM overhead of a training step for every NCM backbone, each on its
stock Open3D-ML settings (its shipped ncm_<model>_<dataset>.yml, unshrunk,
on generated S3DIS or ScanNet data unless --dataset_path is given).

Per backbone: one realistic batch, then forward + loss + backward with and
without the NCM term, interleaved in one process (step.interleaved_times),
and the NCM term alone on the batch's logits. A backbone whose Open3D ops
have no kernel on the device (PVCNN on the CPU wheel) gets the NCM term
alone, on random logits of its output's shape, and no step figures.
"""
import torch

from .step import (interleaved_times, ncm_term_time_on, realistic_batch,
                   set_ncm_weight)

CONFIGS = ('ncm_kpfcnn_s3dis.yml', 'ncm_randlanet_s3dis.yml',
           'ncm_pointtransformer_s3dis.yml', 'ncm_pvcnn_s3dis.yml',
           'ncm_sparseconvunet_scannet.yml')


def output_logits(model, batch, device):
    """The model's logits on the batch, detached (a forward pass), or, when
    its ops have no kernel here, random logits of the same shape (None if
    the shape is unknown)."""
    try:
        with torch.no_grad():
            return model(batch).detach(), True
    except RuntimeError as error:
        if 'requires Open3D built with' not in str(error):
            raise
        if isinstance(batch, dict) and 'point' in batch:  # PVCNN [B, 3, N]
            shape = (batch['point'].shape[0], batch['point'].shape[2],
                     model.cfg.num_classes)
            return torch.randn(shape, device=device), False
        return None, False


def measure(config, args):
    """{figures} of one backbone's config."""
    model, inputs, loss_fn = realistic_batch(config, args.dataset_path,
                                             args.device, args.seed)
    device = next(model.parameters()).device
    weight = model.ncm_loss.cfg.weight or 1.0
    logits, ran = output_logits(model, inputs['data'], device)
    points = int(logits.numel() // logits.shape[-1])
    row = {'config': config, 'model': type(model).__name__, 'points': points,
           'forward_runs': ran}
    set_ncm_weight(model, weight)
    term = ncm_term_time_on(model, logits.requires_grad_(True),
                            inputs['data'], args.repeats)
    row['ncm_term_s'] = term
    if ran:
        times = interleaved_times(model, inputs, loss_fn, weight,
                                  args.repeats, warmup=1)
        row.update(baseline_s=times['baseline'], ncm_s=times['ncm'],
                   overhead=times['ncm'] / times['baseline'] - 1,
                   term_share=term / times['baseline'])
    return row


def table(rows, device):
    lines = ["| backbone | config | points a batch | step without NCM | "
             "with NCM | overhead | NCM term alone |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r['forward_runs']:
            step = (f"{r['baseline_s'] * 1e3:.0f} ms | {r['ncm_s'] * 1e3:.0f}"
                    f" ms | {100 * r['overhead']:+.1f} % | "
                    f"{r['ncm_term_s'] * 1e3:.1f} ms "
                    f"({100 * r['term_share']:.1f} % of the step)")
        else:
            step = (f"not run ({device}: no kernel for its ops) | - | - | "
                    f"{r['ncm_term_s'] * 1e3:.1f} ms")
        lines.append(f"| {r['model']} | {r['config']} | {r['points']} | "
                     f"{step} |")
    return '\n'.join(lines)


def run(args):
    rows = []
    for config in args.backbones or CONFIGS:
        row = measure(config, args)
        rows.append(row)
        print(table([row], args.device).splitlines()[-1], flush=True)
    print(table(rows, args.device))
    return rows
