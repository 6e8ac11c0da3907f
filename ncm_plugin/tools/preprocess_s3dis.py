"""Convert the raw S3DIS rooms into the original_pkl cache the loaders read.

    python scripts/preprocess_s3dis.py \
        /data/Stanford3dDataset_v1.2_Aligned_Version --workers 8

Only rooms without a cache file are converted (all of them with --overwrite);
corrupted rows are skipped with a warning naming file and line. RobustS3DIS
does the same on construction: this script just does it ahead of training.
"""
import argparse
import logging
import sys

from ..datasets.s3dis.convert import convert_s3dis_report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('dataset_path',
                        help='folder holding Area_1 ... Area_6 (raw layout)')
    parser.add_argument('--workers', type=int, default=None,
                        help='conversion processes (default: all CPUs)')
    parser.add_argument('--overwrite', action='store_true',
                        help='convert the rooms already cached too')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        report = convert_s3dis_report(args.dataset_path, workers=args.workers,
                                      overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f'preprocess_s3dis: {error}')
    print(f'{args.dataset_path}: {len(report.written)} rooms converted, '
          f'{len(report.cached)} already cached, '
          f'{len(report.skipped)} corrupted rows skipped')


if __name__ == '__main__':
    main()
