"""The `dataset` keys of LASDataset that shape the converted tiles: one
place for their defaults, checked once (the config checker calls this
before anything is read), errors naming the key."""
from dataclasses import dataclass, field

from .las import (ASPRS_CLASS_MAP, ASPRS_CLASS_NAMES, CHUNK_POINTS,
                  DEFAULT_FEATURE_SCALE, DEFAULT_FEATURES, check_class_map)

COLOUR_CHOICES = ('auto', True, False)


@dataclass(frozen=True)
class LidarSettings:
    """class_map: {ASPRS code: label}, labels 1..len(class_names), 0 = ignored
        (a code not in the map is ignored too).
    class_names: names of the labels 1..K.
    features: LAS dimensions given to the model as features, in this order.
    feature_scale: {dimension: divisor} bringing a feature near 0..1.
    colour: 'auto' (red/green/blue after the features when every tile has
        non-zero colour), true (required), false.
    grid_size: the conversion grid in metres (= model.first_subsampling_dl).
    chunk_points: points read at a time while converting a tile.
    """
    class_map: dict = field(default_factory=lambda: dict(ASPRS_CLASS_MAP))
    class_names: tuple = ASPRS_CLASS_NAMES
    features: tuple = DEFAULT_FEATURES
    feature_scale: dict = field(
        default_factory=lambda: dict(DEFAULT_FEATURE_SCALE))
    colour: object = 'auto'
    grid_size: float = 0.25
    chunk_points: int = CHUNK_POINTS

    @property
    def num_classes(self):
        return len(self.class_names)

    @classmethod
    def from_config(cls, dataset, where='dataset'):
        """The settings of a `dataset` section (a dict; other keys are the
        loader's own); raises ValueError/TypeError naming `where.KEY`."""
        defaults = cls()
        get = {name: dataset[name] if dataset.get(name) is not None else
               getattr(defaults, name) for name in cls.__dataclass_fields__}
        names = get['class_names']
        if isinstance(names, str) or not all(isinstance(n, str) for n in names) \
                or not names:
            raise TypeError(f"{where}.class_names must be a list of class "
                            f"names (labels 1..K), got {names!r}")
        class_map = check_class_map(get['class_map'], len(names),
                                    f'{where}.class_map')
        features = get['features']
        if isinstance(features, str) or \
                not all(isinstance(f, str) for f in features):
            raise TypeError(f"{where}.features must be a list of LAS "
                            f"dimension names, got {features!r}")
        scale = dict(get['feature_scale'])
        for name, value in scale.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not value > 0:
                raise ValueError(f"{where}.feature_scale.{name} must be a "
                                 f"number > 0, got {value!r}")
        if get['colour'] not in COLOUR_CHOICES or \
                not isinstance(get['colour'], (str, bool)):
            raise ValueError(f"{where}.colour must be auto, true or false, got "
                             f"{get['colour']!r}")
        grid = get['grid_size']
        if isinstance(grid, bool) or not isinstance(grid, (int, float)) or \
                not grid > 0:
            raise ValueError(f"{where}.grid_size must be a number of metres "
                             f"> 0, got {grid!r}")
        chunk = get['chunk_points']
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"{where}.chunk_points must be an int >= 1, got "
                             f"{chunk!r}")
        return cls(class_map, tuple(names), tuple(features), scale,
                   get['colour'], float(grid), chunk)

    def conversion_key(self):
        """What a converted tile depends on (stored with it; a change
        converts the tile again). chunk_points is not: it changes nothing."""
        return {'class_map': {str(k): v for k, v in
                              sorted(self.class_map.items())},
                'features': list(self.features),
                'feature_scale': {k: float(v) for k, v in
                                  sorted(self.feature_scale.items())},
                'colour': self.colour, 'grid_size': self.grid_size}
