"""Baseline vs NCM on one test cloud (the paper's Fig. 3 and Fig. 4).

    python scripts/visualize_compare.py --dataset-config ncm_kpconv_s3dis.yml \
        --dataset_path /data/S3DIS --runs logs/kpconv_deform_s3dis \
        logs/ncm_kpconv_s3dis --cloud Area_5_office_1 [--png OUT.png]

Without --png it opens a window (a display is needed) on the cloud with the
views input, ground truth, baseline, NCM and improvement, each label view in
the dataset's LabelLUT colours with its legend; F flips between baseline and
NCM (see evaluation/vis/window.py for why this is not Open3D-ML's own
Visualizer, which crashes on Open3D 0.20). With --png it renders, headless,
input / ground truth / baseline / NCM side by side from one camera, the
improvement view and the legends into one image.
"""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dataset-config', required=True,
                        help='config whose dataset section to use')
    parser.add_argument('--dataset_path', help="override the config's path")
    parser.add_argument('--runs', nargs=2, required=True,
                        metavar=('BASELINE_RUN', 'NCM_RUN'),
                        help='folders of two test runs (with predictions/)')
    parser.add_argument('--cloud', required=True, help='test cloud name')
    parser.add_argument('--split', default='test', help='split of the cloud')
    parser.add_argument('--names', nargs=2, default=('baseline', 'NCM'),
                        help='titles of the two runs')
    parser.add_argument('--png', help='write this image instead of opening '
                        'the window')
    parser.add_argument('--view', choices=('oblique', 'top'),
                        default='oblique', help='--png: camera, oblique from '
                        'above (default) or top (airborne tiles)')
    parser.add_argument('--size', nargs=2, type=int, default=(480, 400),
                        metavar=('W', 'H'), help='--png: panel size in pixels')
    parser.add_argument('--window-size', nargs=2, type=int,
                        default=(1280, 800), metavar=('W', 'H'),
                        help='size of the window in pixels')
    parser.add_argument('--commands-from-stdin', action='store_true',
                        help='also take commands from standard input, one a '
                        'line: show VIEW, flip, save PATH, quit')
    parser.add_argument('--point-size', type=float, default=3.0)
    parser.add_argument('--hide', nargs='*', default=None, metavar='CLASS',
                        help='ground-truth classes left out of every view '
                        '(default: ceiling, when the dataset has one)')
    args = parser.parse_args(argv)
    if args.names[0] == args.names[1]:
        parser.error(f"--names: the two runs need different titles, got "
                     f"{args.names[0]!r} twice")

    from ..evaluation.vis.compare import load_comparison, load_dataset
    try:
        dataset, model = load_dataset(args.dataset_config, args.dataset_path)
        comparison = load_comparison(dataset, model['ignored_label_inds'],
                                     *args.runs, args.cloud, args.split)
    except (FileNotFoundError, KeyError, ValueError) as error:
        sys.exit(f"visualize_compare: error: {error}")
    names = set(comparison.label_to_names.values())
    hide = [c for c in ('ceiling',) if c in names] if args.hide is None \
        else args.hide
    unknown = sorted(set(hide) - names)
    if unknown:
        sys.exit(f"visualize_compare: error: --hide {unknown}: no such class "
                 f"(classes: {sorted(names)})")
    comparison = comparison.without(hide)
    if args.png:
        from ..evaluation.vis.render import render_comparison
        size = render_comparison(comparison, args.png, *args.size,
                                 args.point_size, args.names, args.view)
        print(f"wrote {args.png} ({size[0]} x {size[1]} pixels)")
    else:
        from ..evaluation.vis.window import ComparisonWindow, has_display
        if not has_display():
            sys.exit("visualize_compare: error: no display (DISPLAY is not "
                     "set): use --png OUT.png to render without one")
        window = ComparisonWindow(comparison, args.names, *args.window_size,
                                  args.point_size)
        if args.commands_from_stdin:
            window.listen(sys.stdin)
        window.run()


if __name__ == '__main__':
    main()
