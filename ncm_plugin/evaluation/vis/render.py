"""Headless picture of a Comparison: input, ground truth, baseline and NCM
side by side from one camera, then the improvement view and the legends.

Rendering is Open3D's OffscreenRenderer (Filament), which runs without a
display on Mesa's software Vulkan (libvulkan1 + mesa-vulkan-drivers). The
panels are assembled and labelled with Pillow, so every panel keeps its
exact pixels (`panel_boxes` says where each one is).
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .compare import IMPROVEMENT, view_colours, view_legend

TITLE_HEIGHT = 40
BACKGROUND = (255, 255, 255)
PANELS = ('input', 'ground truth', 'baseline', 'NCM', 'improvement')


def panel_boxes(width, height):
    """{panel: (left, top, right, bottom)} in the composed image of panels
    width x height: four in the first row, the improvement view below the
    first; the legends take the rest of the second row."""
    row = TITLE_HEIGHT + height
    boxes = {name: (k * width, TITLE_HEIGHT, (k + 1) * width, row)
             for k, name in enumerate(PANELS[:4])}
    boxes['improvement'] = (0, row + TITLE_HEIGHT, width, 2 * row)
    return boxes


def image_size(width, height):
    """(width, height) of the composed image."""
    return 4 * width, 2 * (TITLE_HEIGHT + height)


# Camera directions (from the cloud to the eye) and up vectors: 'oblique'
# from above and aside (rooms, scans), 'top' straight down, north up
# (airborne tiles).
VIEWS = {'oblique': ((-0.55, -1.0, 0.95), (0.0, 0.0, 1.0)),
         'top': ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0))}


def camera(points, fov=50.0, view='oblique'):
    """(centre, eye, up): a VIEWS view that frames the cloud's bounding
    sphere."""
    low, high = points.min(axis=0), points.max(axis=0)
    centre = (low + high) / 2
    radius = max(float(np.linalg.norm(high - low)) / 2, 1e-3)
    direction, up = (np.array(v, dtype=np.float64) for v in VIEWS[view])
    direction /= np.linalg.norm(direction)
    distance = radius / np.sin(np.radians(fov) / 2) * 1.02
    if view == 'top':  # frame the footprint, not the bounding sphere
        half = max(float(np.max(high[:2] - low[:2])) / 2, 1e-3)
        distance = half / np.tan(np.radians(fov) / 2) * 1.05 + \
            float(high[2] - low[2]) / 2
    return centre, centre + distance * direction, up


def render_panels(points, colour_sets, width, height, point_size=3.0,
                  fov=50.0, view='oblique'):
    """One image [height, width, 3] uint8 per colour set [N, 3] (0..1), all
    from the same camera."""
    import open3d as o3d
    from open3d.visualization import rendering
    renderer = rendering.OffscreenRenderer(width, height)
    material = rendering.MaterialRecord()
    material.shader = 'defaultUnlit'
    material.point_size = float(point_size)
    # No tone mapping: label colours come out as the LUT has them.
    renderer.scene.view.set_post_processing(False)
    centre, eye, up = camera(points, fov, view)
    cloud = o3d.geometry.PointCloud(
        o3d.utility.Vector3dVector(points.astype(np.float64)))
    images = []
    for colours in colour_sets:
        cloud.colors = o3d.utility.Vector3dVector(
            np.asarray(colours, dtype=np.float64))
        renderer.scene.clear_geometry()
        renderer.scene.add_geometry('cloud', cloud, material)
        # Camera after the geometry: set before it, Open3D 0.20 renders an
        # empty scene (seen on Mesa's llvmpipe).
        renderer.scene.set_background([1.0, 1.0, 1.0, 1.0])
        renderer.setup_camera(fov, centre, eye, up)
        images.append(np.asarray(renderer.render_to_image()).copy())
    del renderer
    return images


def _font(size):
    from matplotlib import font_manager
    return ImageFont.truetype(font_manager.findfont('DejaVu Sans'), size)


def _legend(draw, entries, left, top, right, title, font, bold):
    """Colour swatches with names, in as many columns as fit; returns the
    bottom of the legend."""
    draw.text((left, top), title, fill=(0, 0, 0), font=bold)
    top += 30
    column = max(int(draw.textlength(name, font=font)) for name, _ in entries)
    column += 44
    per_row = max(1, (right - left) // column)
    for k, (name, colour) in enumerate(entries):
        x = left + (k % per_row) * column
        y = top + (k // per_row) * 26
        rgb = tuple(int(round(255 * c)) for c in colour)
        draw.rectangle([x, y + 2, x + 20, y + 20], fill=rgb, outline=(0, 0, 0))
        draw.text((x + 28, y), name, fill=(0, 0, 0), font=font)
    return top + ((len(entries) - 1) // per_row + 1) * 26


def compose(images, titles, width, height, class_entries, caption=''):
    """The final picture (PIL Image) from the five panel images."""
    canvas = Image.new('RGB', image_size(width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font, bold = _font(17), _font(20)
    for name, image, title in zip(PANELS, images, titles):
        left, top, right, bottom = panel_boxes(width, height)[name]
        canvas.paste(Image.fromarray(image), (left, top))
        draw.text(((left + right) / 2, top - TITLE_HEIGHT / 2), title,
                  fill=(0, 0, 0), font=bold, anchor='mm')
        draw.rectangle([left, top - TITLE_HEIGHT, right - 1, bottom - 1],
                       outline=(160, 160, 160))
    legend_left = width + 30
    right = 4 * width - 20
    top = TITLE_HEIGHT + height + 12
    top = _legend(draw, class_entries, legend_left, top, right,
                  'Classes (Open3D-ML LabelLUT)', font, bold) + 16
    top = _legend(draw, [v for v in IMPROVEMENT.values()], legend_left, top,
                  right, 'Improvement', font, bold) + 16
    if caption:
        draw.text((legend_left, top), caption, fill=(60, 60, 60), font=font)
    return canvas


def render_comparison(comparison, path, width=480, height=400, point_size=3.0,
                      names=('baseline', 'NCM'), view='oblique'):
    """Write the PNG of a Comparison seen from `view` (VIEWS); returns its
    (width, height)."""
    colour_sets = list(view_colours(comparison, names).values())
    images = render_panels(comparison.points, colour_sets, width, height,
                           point_size, view=view)
    valid = ~np.isin(comparison.truth, comparison.ignored_label_inds)
    accuracy = [100.0 * np.mean(p[valid] == comparison.truth[valid])
                if valid.any() else float('nan')
                for p in (comparison.baseline, comparison.ncm)]
    titles = ['input', 'ground truth',
              f'{names[0]} ({accuracy[0]:.1f} % right)',
              f'{names[1]} ({accuracy[1]:.1f} % right)',
              'improvement: NCM vs baseline']
    entries = view_legend(comparison, 'ground truth')
    counts = np.bincount(comparison.improvement(), minlength=len(IMPROVEMENT))
    caption = (f"{comparison.name}: {len(comparison.points)} points; NCM "
               f"right where the baseline is wrong: {counts[1]}, the "
               f"reverse: {counts[2]}")
    image = compose(images, titles, width, height, entries, caption)
    image.save(path)
    return image.size
