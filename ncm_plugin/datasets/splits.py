"""Open3D-ML's split names with their aliases, and the lookup the loaders
that group their clouds into train / val / test share."""

SPLITS = {'train': ('train', 'training'), 'val': ('val', 'validation', 'valid'),
          'test': ('test', 'testing')}


def split_list(groups, split, everything=None):
    """The clouds of `split` (a name or alias, e.g. 'training', 'valid') from
    `groups` {'train', 'val', 'test': [...]}; 'all' gives `everything`
    (default: train, val and test in turn); another name is a ValueError
    listing the valid ones."""
    for key, aliases in SPLITS.items():
        if split in aliases:
            return list(groups[key])
    if split == 'all':
        return list(everything) if everything is not None else \
            [cloud for key in SPLITS for cloud in groups[key]]
    raise ValueError(f'Invalid split {split!r}: use one of '
                     f'{sum(SPLITS.values(), ()) + ("all",)}')
