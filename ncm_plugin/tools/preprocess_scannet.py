"""Convert raw ScanNet v2 scans into the per-scene arrays the Scannet loaders read.

    python scripts/preprocess_scannet.py /data/ScanNet /data/scannet_processed --workers 8

RAW holds scans/ (train and val scans, with their labels) and scans_test/ (test
scans, mesh only). The official split lists (scannetv2_train.txt, _val.txt,
_test.txt; Open3D-ML's copies by default) decide which scans are converted;
they are copied into OUT, where ScanNet20 reads them. Scenes already in OUT are
skipped (all redone with --overwrite); a scene that cannot be read (a truncated
ply, ...) is reported by file name after the others are converted.
"""
import argparse
import logging
import sys

from ..datasets.scannet.convert import convert_scannet


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('raw', help='ScanNet v2 download: the folder holding scans/ and scans_test/')
    parser.add_argument('out', help='output folder (flat: <scene>_vert.npy, ...)')
    parser.add_argument('--train-list', help='scannetv2_train.txt (default: the official list)')
    parser.add_argument('--val-list', help='scannetv2_val.txt (default: the official list)')
    parser.add_argument('--test-list', help='scannetv2_test.txt (default: the official list)')
    parser.add_argument('--workers', type=int, default=None,
                        help='conversion processes (default: all CPUs)')
    parser.add_argument('--overwrite', action='store_true', help='convert converted scenes again')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        report = convert_scannet(args.raw, args.out, args.train_list, args.val_list,
                                 args.test_list, workers=args.workers, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f'preprocess_scannet: {error}')
    print(f'{args.out}: {len(report.written)} scenes converted, '
          f'{len(report.cached)} already converted')


if __name__ == '__main__':
    main()
