"""Subsample raw Semantic3D scans once to the training grid and cache them as arrays.

    python scripts/preprocess_semantic3d.py /data/semantic3d /data/semantic3d_grid --grid-size 0.06

RAW holds the unpacked <scan>.txt files (and <scan>.labels for training scans).
Each scan is streamed in chunks of --chunk-rows lines, so memory does not grow
with the file size, only with the number of grid cells (the output). Use the
grid of the model (model.first_subsampling_dl). Scans already converted at that
grid are skipped (all redone with --overwrite). Bad rows of training scans are
skipped with a warning naming file and line; see ncm_plugin/datasets/semantic3d/convert.py.
"""
import argparse
import logging
import sys

from ..datasets.semantic3d.convert import CHUNK_ROWS, convert_semantic3d


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('raw', help='folder of <scan>.txt and <scan>.labels files')
    parser.add_argument('out', help='output folder (<scan>.points.npy, ...)')
    parser.add_argument('--grid-size', type=float, default=0.06,
                        help='cell size in metres (default 0.06, KPConv on Semantic3D)')
    parser.add_argument('--chunk-rows', type=int, default=CHUNK_ROWS,
                        help=f'lines parsed at once (default {CHUNK_ROWS}); bounds the memory')
    parser.add_argument('--overwrite', action='store_true', help='convert converted scans again')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        report = convert_semantic3d(args.raw, args.out, args.grid_size, args.chunk_rows,
                                    overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f'preprocess_semantic3d: {error}')
    print(f'{args.out}: {len(report.written)} scans converted, {len(report.cached)} already '
          f'converted, {len(report.bad_rows)} bad rows')


if __name__ == '__main__':
    main()
