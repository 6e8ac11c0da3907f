"""KL direction x target ablation (the paper's section 4.3): the baseline and
forward/reverse x sample/scene, same seed and budget, one comparison table.

    python scripts/ablate_kl.py --config ncm_kpconv_demo.yml
    python scripts/ablate_kl.py --config ncm_kpconv_s3dis.yml --out logs/ablate \
        --dataset_path /data/S3DIS --device cuda --pipeline.max_epoch 100
    python scripts/ablate_kl.py --config ncm_kpconv_ign_lidarhd.yml --seeds 3 \
        --variants baseline forward-sample reverse-sample

Arguments it does not know (--dataset_path, --device, dotted overrides) are
given to every run_pipeline.py run. Writes OUT/ablation.md (the comparison
table and whether the NCM KL fell in each run), OUT/ablation.csv and
OUT/ablation.json; each run lives in OUT/<variant>/ with its run.log. With
--seeds N: runs in OUT/seed<s>/<variant>/, and the table gives mean and
standard deviation over the seeds and the paired differences to the baseline.
"""
import argparse
import sys
from pathlib import Path

from .ablation import VARIANTS, ablate, select_variants


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog='Every other option is given to each run_pipeline.py run: '
        '--dataset_path PATH, --device cpu|cuda, dotted overrides such as '
        '--pipeline.max_epoch 100.')
    parser.add_argument('--config', required=True,
                        help='an NCM config (path or name in configs/)')
    parser.add_argument('--out', help='output folder (default '
                        'logs/ablate_kl/<config name>)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of every run, or the first seed with '
                        '--seeds (default 0)')
    parser.add_argument('--seeds', type=int, default=1, metavar='N',
                        help='train every variant with N seeds (seed, '
                        'seed+1, ...) and report mean, standard deviation '
                        'and the paired difference to the baseline '
                        '(default 1)')
    parser.add_argument('--variants', nargs='+', metavar='NAME',
                        help='run only these of: ' + ' '.join(
                            name for name, _ in VARIANTS))
    args, extra = parser.parse_known_args(argv)
    out = args.out or Path('logs') / 'ablate_kl' / Path(args.config).stem
    try:
        print(ablate(args.config, out, args.seed, extra,
                     select_variants(args.variants), args.seeds))
    except (FileNotFoundError, FileExistsError, KeyError, ValueError,
            RuntimeError) as error:
        sys.exit(f"ablate_kl: error: {error}")


if __name__ == '__main__':
    main()
