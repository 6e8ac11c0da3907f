"""What has to hold on a GPU, checked in one short run: `ncm-gpu-check`
(scripts/gpu_check.py) writes gpu_check.json and gpu_check.md into --out
and exits 1 if a check failed.

--part term (term.py) needs torch alone: the NCM products and term of
ncm.py against a gather-sum reference and against the construction before
it (column0.py), their time, memory, autocast and host-device syncs, on
batches generated on the spot (batches.py). --part pipeline (pipeline.py)
needs Open3D: every backbone's training step with and without AMP and NCM,
the demo config with workers, reproducibility, the wait for data. Without
Open3D the pipeline part is skipped (not a failure; the report says so).

--device cpu (or --tiny) runs both parts on tiny sizes in about a minute,
so that the check itself keeps working without a GPU.
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from .report import Report

PARTS = ('term', 'pipeline', 'all')


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='ncm-gpu-check', description=__doc__.splitlines()[0])
    parser.add_argument('--part', choices=PARTS, default='all',
                        help='term: the NCM term, torch alone; pipeline: '
                        'training runs (needs Open3D); all: both (default)')
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda',
                        help='cuda (default); cpu runs the tiny mode')
    parser.add_argument('--out', default='.',
                        help='folder for gpu_check.json/.md and the runs '
                        '(default: the current folder)')
    parser.add_argument('--tiny', action='store_true',
                        help='tiny sizes (always on with --device cpu)')
    return parser.parse_args(argv)


def open3d_version():
    """Open3D's version and build ('cuda' or 'cpu'), or None if absent."""
    try:
        import open3d
    except ImportError:
        return None
    cuda = getattr(open3d, '_build_config', {}).get('BUILD_CUDA_MODULE')
    return f"{open3d.__version__} ({'cuda' if cuda else 'cpu'} build)"


def header(args, tiny, open3d):
    gpu = (torch.cuda.get_device_name() if args.device == 'cuda' else None)
    return {'part': args.part, 'device': args.device, 'tiny': tiny,
            'torch': torch.__version__, 'cuda': torch.version.cuda,
            'gpu': gpu, 'open3d': open3d or 'absent',
            'python': platform.python_version(),
            'started': time.strftime('%Y-%m-%d %H:%M:%S')}


def main(argv=None):
    """Returns the exit status: 0 when no check failed, 1 else."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        build = (f"CUDA {torch.version.cuda}" if torch.version.cuda else
                 "a CPU-only build")
        sys.exit(f"ncm-gpu-check: error: --device cuda, but torch "
                 f"{torch.__version__} ({build}) sees no CUDA device; "
                 f"--device cpu runs the tiny mode")
    tiny = args.tiny or args.device == 'cpu'
    open3d = open3d_version() if args.part != 'term' else 'not imported'
    report = Report(args.out, header(args, tiny, open3d))
    if args.part in ('term', 'all'):
        from . import term
        term.run(report, args.device, tiny)
    if args.part in ('pipeline', 'all'):
        if open3d is None:
            report.skip_part('pipeline', 'needs Open3D (open3d does not '
                             'import here: install the plugin with '
                             'scripts/install.sh --cuda)')
        else:
            from . import pipeline
            pipeline.run(report, args.device, tiny, Path(args.out))
    report.write()
    failed = report.failed()
    report.progress(f"done: {len(report.checks)} checks, {len(failed)} "
                    f"failed; {Path(args.out) / 'gpu_check.md'}")
    return 1 if failed else 0
