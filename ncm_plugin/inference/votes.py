"""The geometric transform of a test-time vote, seeded, so that a vote can
be recomputed alone.

Vote 0 is the identity; vote v > 0 turns, scales and flips the input by
what the model's own augmentation settings allow: KPConv's keys
(augment_rotation, augment_scale_min/max, augment_scale_anisotropic,
augment_symmetries) or the `augment` block of Open3D-ML's other backbones
(rotate.method, scale.min_s/max_s, RandomHorizontalFlip.axes). No noise, no
colour change, no dropout: a vote looks at the same points.
"""
import numpy as np


def vote_transform(cfg, vote, seed=0):
    """(R [3, 3], scale [3]) float32 of vote `vote`, drawn from a generator
    seeded by (seed, vote): p' = (p @ R.T) * scale."""
    if vote == 0:
        return np.eye(3, dtype=np.float32), np.ones(3, dtype=np.float32)
    rng = np.random.default_rng([seed, vote])
    rotation, (low, high), anisotropic, flips = augmentation_of(cfg)
    R = np.eye(3)
    if rotation in ('vertical', 'all'):
        theta = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(theta), np.sin(theta)
        R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    if rotation == 'all':
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(0, 2 * np.pi)
        K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]],
                      [-axis[1], axis[0], 0]])
        R = (np.eye(3) + np.sin(angle) * K +
             (1 - np.cos(angle)) * K @ K) @ R
    size = 3 if anisotropic else 1
    scale = np.broadcast_to(rng.uniform(low, high, size), (3,)).copy()
    scale[flips & (rng.integers(0, 2, 3) == 1)] *= -1
    return R.astype(np.float32), scale.astype(np.float32)


def augmentation_of(cfg):
    """(rotation 'vertical'|'all'|'none', (scale low, high), anisotropic,
    flips [3] bool) of a model config: KPConv's keys, or the `augment`
    block of the other backbones."""
    augment = cfg.get('augment')
    if isinstance(augment, dict) or hasattr(augment, 'keys'):
        augment = dict(augment)
        rotate = dict(augment.get('rotate') or {})
        rotation = rotate.get('method', 'none') if 'rotate' in augment \
            else 'none'
        scale = dict(augment.get('scale') or {})
        bounds = (scale.get('min_s', 1.0), scale.get('max_s', 1.0))
        flips = np.zeros(3, dtype=bool)
        flip = augment.get('RandomHorizontalFlip')
        if flip is not None:
            flips[list(dict(flip).get('axes', [0, 1]))] = True
        return rotation, bounds, False, flips
    flips = np.asarray(cfg.get('augment_symmetries', [False] * 3), dtype=bool)
    return (cfg.get('augment_rotation', 'vertical'),
            (cfg.get('augment_scale_min', 1.0),
             cfg.get('augment_scale_max', 1.0)),
            cfg.get('augment_scale_anisotropic', False), flips)
