"""One table of several test runs (the paper's Table 2): a row per run, the
differences to the first run, and optionally the published rows.

    python scripts/compare_results.py logs/kpconv_deform_s3dis \
        logs/ncm_kpconv_s3dis --names "KPConv deform" NCM-KPConv \
        --published --out logs/compare_s3dis

A run is a results.json, or a folder with exactly one results.json below it
(written by `run_pipeline.py ... --split test`).
"""
import argparse
import sys

from ..evaluation.results import compare_runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('runs', nargs='+', help='run folders or results.json')
    parser.add_argument('--names', nargs='+', help='one row name per run')
    parser.add_argument('--published', action='store_true',
                        help="add the paper's published mIoU (marked published)")
    parser.add_argument('--out', help='write OUT.md and OUT.csv')
    args = parser.parse_args(argv)
    if args.names and len(args.names) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(args.names)} --names")
    try:
        print(compare_runs(args.runs, args.names, args.published, args.out),
              end='')
    except (FileNotFoundError, KeyError, ValueError) as error:
        sys.exit(f"compare_results: error: {error}")


if __name__ == '__main__':
    main()
