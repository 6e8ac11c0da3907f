"""Write a small synthetic dataset in the exact raw layout of a real one.

    python scripts/make_demo_data.py data/demo_s3dis --dataset s3dis \
        --seed 0 --areas 1 2 3 5

The result is read by the same loaders and configs as the real dataset (set
dataset_path to OUT); it is small enough to train a tiny model on a CPU.
"""
import argparse
import sys
import time

from ..datasets.demo import WRITERS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out', help='new folder to write the dataset into')
    parser.add_argument('--dataset', choices=sorted(WRITERS), default='s3dis',
                        help='layout to imitate')
    parser.add_argument('--seed', type=int, default=0,
                        help='random seed: same seed, same files')
    parser.add_argument('--areas', type=int, nargs='+',
                        help='s3dis only: area numbers to write '
                             '(default 1 2 3 5)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        options = {'seed': args.seed}
        if args.areas is not None:
            if args.dataset != 's3dis':
                sys.exit('make_demo_data: --areas applies to s3dis only')
            options['areas'] = tuple(args.areas)
        rooms = WRITERS[args.dataset](args.out, **options)
    except FileExistsError as error:
        sys.exit(f'make_demo_data: {error}')
    print(f'{args.dataset}: wrote {len(rooms)} scenes under {args.out} in '
          f'{time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
    main()
