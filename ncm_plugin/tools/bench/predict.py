"""ncm-predict's speed and memory: seconds per tile, points per second and
the share of the time outside the model's forward pass, for torch thread
counts and vote counts, on given tiles and generated ones.

    python -m ncm_plugin.tools.bench.predict --ckpt CKPT --tiles tests/data/ign_lidarhd/*.laz \
        --synthetic 3000000 --threads 1 2 --votes 1 4 --out bench_predict

Each (threads, votes) runs the tiles one after the other in this process
(`inference/lidar.py`'s classify_tile, as the command runs them); peak RSS
is the process's, so run a large tile alone (`--synthetic 30000000`) for
its figure.
"""
import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch


def measure(trained, tiles, threads, votes, out):
    """[row] of one (threads, votes) over the tiles."""
    from ...inference.lidar import classify_tile
    torch.set_num_threads(threads)
    rows = []
    for tile in tiles:
        start = time.perf_counter()
        report = classify_tile(trained, tile, out / f'{threads}_{votes}_'
                               f'{Path(tile).name}', votes=votes)
        seconds = time.perf_counter() - start
        stages = report['seconds']
        rows.append({
            'tile': Path(tile).name, 'threads': threads, 'votes': votes,
            'points': report['points'], 'grid_cells': report['grid_cells'],
            'spheres': report['spheres'], 'seconds': seconds,
            'points_per_second': report['points'] / seconds,
            'outside_forward': 1 - stages['forward'] / stages['total'],
            'stages': stages})
        print(f"{rows[-1]['tile']}: {threads} thread(s), {votes} vote(s): "
              f"{seconds:.1f} s, {rows[-1]['points_per_second']:.0f} points/s,"
              f" {100 * rows[-1]['outside_forward']:.0f} % outside the forward"
              f" pass", flush=True)
    return rows


def table(rows):
    lines = ['| tile | threads | votes | points | grid cells | spheres | s | '
             'points/s | outside forward |', '|' + ' --- |' * 9]
    for r in rows:
        lines.append(f"| {r['tile']} | {r['threads']} | {r['votes']} | "
                     f"{r['points']:,} | {r['grid_cells']:,} | {r['spheres']} |"
                     f" {r['seconds']:.1f} | {r['points_per_second']:,.0f} | "
                     f"{100 * r['outside_forward']:.0f} % |")
    return '\n'.join(lines) + '\n'


def main(argv=None):
    from ...inference.trained import load_trained
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ckpt', required=True)
    parser.add_argument('--tiles', nargs='*', default=[])
    parser.add_argument('--synthetic', type=int, nargs='*', default=[],
                        help='also generated tiles of these point counts')
    parser.add_argument('--threads', type=int, nargs='+', default=[1])
    parser.add_argument('--votes', type=int, nargs='+', default=[1])
    parser.add_argument('--out', default='bench_predict')
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiles = list(args.tiles)
    work = Path(tempfile.mkdtemp(prefix='bench_predict_', dir=out))
    if args.synthetic:
        from ...datasets.lidar.synthetic import write_synthetic_tile
        for count in args.synthetic:
            path = work / f'synthetic_{count}.laz'
            write_synthetic_tile(path, count, seed=0)
            tiles.append(path)
    trained = load_trained(args.ckpt)
    rows = []
    for threads in args.threads:
        for votes in args.votes:
            rows += measure(trained, tiles, threads, votes, work)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (out / 'bench_predict.json').write_text(json.dumps(
        {'rows': rows, 'peak_rss_bytes': peak}, indent=1) + '\n')
    text = table(rows) + f"\nPeak RSS of the process: {peak / 2**30:.2f} GiB\n"
    (out / 'bench_predict.md').write_text(text)
    print(text)
    return rows


if __name__ == '__main__':
    main()
