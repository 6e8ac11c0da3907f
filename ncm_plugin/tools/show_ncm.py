"""Heatmaps of the target NCM and the NCMs predicted by the baseline and the
NCM model, for one test cloud or pooled over a split.

    python scripts/show_ncm.py --dataset-config ncm_kpconv_s3dis.yml \
        --dataset_path /data/S3DIS --runs logs/kpconv_deform_s3dis \
        logs/ncm_kpconv_s3dis [--cloud Area_5_office_1] --out ncm.png

Writes OUT (PNG: the three matrices on a log scale with class names on the
axes, and below them prediction - target and which model is closer) and
OUT.npz with the matrices.
"""
import argparse
import sys
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dataset-config', required=True,
                        help='config whose dataset and model sections to use')
    parser.add_argument('--dataset_path', help="override the config's path")
    parser.add_argument('--runs', nargs=2, required=True,
                        metavar=('BASELINE_RUN', 'NCM_RUN'),
                        help='folders of two test runs (with predictions/)')
    parser.add_argument('--names', nargs=2, default=('baseline', 'NCM'))
    parser.add_argument('--cloud', help='one cloud (default: the whole split)')
    parser.add_argument('--split', default='test')
    parser.add_argument('--out', default='ncm_heatmaps.png')
    args = parser.parse_args(argv)

    from ..evaluation.vis.heatmaps import write_heatmaps
    try:
        write_heatmaps(args.dataset_config, args.runs, args.out, args.names,
                       args.cloud, args.split, args.dataset_path)
    except (FileNotFoundError, KeyError, ValueError) as error:
        sys.exit(f"show_ncm: error: {error}")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.npz')}")


if __name__ == '__main__':
    main()
