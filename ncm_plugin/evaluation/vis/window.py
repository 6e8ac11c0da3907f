"""The interactive comparison: one Open3D window, the cloud coloured by one
view at a time (input, ground truth, baseline, NCM, improvement), the legend
of the view beside it, and a key that flips between baseline and NCM.

Why not Open3D-ML's Visualizer: in Open3D 0.20 it cannot show a point cloud
at all. It always gives the cloud a `__visualization_scalar` attribute, and
adding a cloud with that attribute to a scene throws in C++
(`PointCloudBuffers.cpp` reads it with `GetDataPtr<const float>()`, whose
`Dtype::FromType<const float>` has no specialisation) and then segfaults or
hangs, whatever the attribute's dtype, the material or the data. This window
gives the scene positions and per-point colours only (shader `defaultUnlit`),
computes the colours in numpy from the dataset's LabelLUT, and recolours the
cloud in place when the view changes.

Keys: F flips baseline / NCM, N (or Tab) shows the next view, 1..5 pick a
view, Q (or Esc) closes the window.

Scripting (`listen`, `--commands-from-stdin`): one command a line on standard
input, `show VIEW`, `flip`, `save PATH` (the 3D view as a PNG) or `quit`;
after each draw the window prints `shown VIEW` (or `saved PATH`) on standard
output, so a script knows what is on screen.
"""
import os
import sys
import threading

import numpy as np

from .compare import view_colours, view_legend, view_names
from .render import camera

CLOUD = 'cloud'
PANEL_EM = 17  # width of the side panel, in font heights
FOV = 50.0


def has_display():
    return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


class ComparisonWindow:
    """A window on one Comparison; `run()` blocks until it is closed."""

    def __init__(self, comparison, names=('baseline', 'NCM'), width=1280,
                 height=800, point_size=3.0, out=sys.stdout):
        import open3d as o3d
        from open3d.visualization import gui, rendering
        self._o3d, self._gui, self._rendering = o3d, gui, rendering
        self.names, self.out = tuple(names), out
        self.views = view_colours(comparison, names)
        self.legends = {v: view_legend(comparison, v) for v in self.views}
        self.current = None

        self.app = gui.Application.instance
        self.app.initialize()
        self.window = gui.Application.instance.create_window(
            f"{comparison.name}: {names[0]} vs {names[1]}", width, height)
        self.scene = gui.SceneWidget()
        self.scene.scene = rendering.Open3DScene(self.window.renderer)
        self.scene.scene.set_background([1.0, 1.0, 1.0, 1.0])
        # No tone mapping: the LUT colours reach the screen unchanged.
        self.scene.scene.view.set_post_processing(False)
        self.window.add_child(self.scene)
        self._build_panel(comparison)
        self.window.set_on_layout(self._on_layout)
        self.window.set_on_key(self._on_key)
        self.scene.set_on_key(self._on_key)

        points = np.ascontiguousarray(comparison.points, dtype=np.float32)
        self.cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(points))
        self.cloud.point['colors'] = o3d.core.Tensor(
            np.ones_like(points, dtype=np.float32))
        material = rendering.MaterialRecord()
        material.shader = 'defaultUnlit'
        material.point_size = float(point_size)
        self.scene.scene.add_geometry(CLOUD, self.cloud, material)
        self.scene.setup_camera(FOV, self.scene.scene.bounding_box,
                                self.scene.scene.bounding_box.get_center())
        self.scene.look_at(*camera(comparison.points, FOV))
        self.show(view_names(names)[0])

    # -- layout -----------------------------------------------------------
    def _build_panel(self, comparison):
        gui = self._gui
        em = self.window.theme.font_size
        margin = 0.5 * em
        self.panel = gui.Vert(0.25 * em, gui.Margins(margin, margin, margin,
                                                     margin))
        self.panel.add_child(gui.Label(f"{comparison.name}\n"
                                       f"{len(comparison.points)} points"))
        self.panel.add_child(gui.Label('View (N: next, 1-5)'))
        self.combo = gui.Combobox()
        for view in self.views:
            self.combo.add_item(view)
        self.combo.set_on_selection_changed(lambda text, index: self.show(text))
        self.panel.add_child(self.combo)
        flip = gui.Button(f"Flip {self.names[0]} / {self.names[1]} (F)")
        flip.set_on_clicked(self.flip)
        self.panel.add_child(flip)
        self.panel.add_fixed(margin)
        self.legend_title = gui.Label('')
        self.panel.add_child(self.legend_title)
        # Fixed rows, refilled per view. A Label's background is not drawn,
        # so the swatch is a button (enabled: a disabled one is drawn dimmed,
        # in a colour the cloud does not have).
        self.rows = []
        for _ in range(max(len(entries) for entries in self.legends.values())):
            row, swatch, text = gui.Horiz(0.5 * em), gui.Button('    '), \
                gui.Label('')
            row.add_child(swatch)
            row.add_child(text)
            self.panel.add_child(row)
            self.rows.append((row, swatch, text))
        self.window.add_child(self.panel)

    def _on_layout(self, context):
        rect = self.window.content_rect
        width = PANEL_EM * self.window.theme.font_size
        self.scene.frame = self._gui.Rect(rect.x, rect.y, rect.width - width,
                                          rect.height)
        self.panel.frame = self._gui.Rect(rect.get_right() - width, rect.y,
                                          width, rect.height)

    def _on_key(self, event):
        gui = self._gui
        if event.type != gui.KeyEvent.Type.DOWN:
            return gui.Widget.EventCallbackResult.IGNORED
        views = list(self.views)
        number = int(event.key) - int(gui.KeyName.ONE)
        if event.key == gui.KeyName.F:
            self.flip()
        elif event.key in (gui.KeyName.N, gui.KeyName.TAB):
            self.show(views[(views.index(self.current) + 1) % len(views)])
        elif 0 <= number < len(views):
            self.show(views[number])
        elif event.key in (gui.KeyName.Q, gui.KeyName.ESCAPE):
            self.window.close()
        else:
            return gui.Widget.EventCallbackResult.IGNORED
        return gui.Widget.EventCallbackResult.CONSUMED

    # -- what is shown ----------------------------------------------------
    def show(self, view):
        """Colour the cloud by `view` (on the GUI thread); prints
        `shown VIEW` once it is drawn."""
        if view not in self.views:
            self._say(f"error: no view {view!r}; views: {list(self.views)}")
            return
        self.cloud.point['colors'] = self._o3d.core.Tensor(
            np.ascontiguousarray(self.views[view], dtype=np.float32))
        self.scene.scene.scene.update_geometry(
            CLOUD, self.cloud, self._rendering.Scene.UPDATE_COLORS_FLAG)
        self.current = view
        self.combo.selected_text = view
        self._fill_legend(view)
        self.window.set_needs_layout()
        self._after_draw(lambda image: self._say(f"shown {view}"))

    def flip(self):
        """Baseline <-> NCM (from any other view: the baseline)."""
        first, second = self.names
        self.show(second if self.current == first else first)

    def save(self, path):
        """The 3D view as a PNG, as drawn next."""
        def write(image):
            self._o3d.io.write_image(str(path), image)
            self._say(f"saved {path}")
        self._after_draw(write)

    def _fill_legend(self, view):
        entries = self.legends[view]
        self.legend_title.text = f"Legend: {view}" if entries else \
            f"{view}: the input colours"
        for k, (row, swatch, text) in enumerate(self.rows):
            row.visible = k < len(entries)
            if row.visible:
                name, colour = entries[k]
                swatch.background_color = self._gui.Color(*colour[:3], 1.0)
                text.text = name

    def _after_draw(self, callback):
        """callback(image) on the GUI thread once the scene is next drawn."""
        self.scene.scene.scene.render_to_image(callback)
        self.scene.force_redraw()

    def _say(self, line):
        print(line, file=self.out, flush=True)

    # -- running ----------------------------------------------------------
    def listen(self, stream):
        """Take commands from `stream` (one a line) on a thread of its own;
        each runs on the GUI thread. End of stream closes the window."""
        def read():
            for line in stream:
                verb, _, rest = line.strip().partition(' ')
                action = {'show': lambda rest=rest: self.show(rest),
                          'flip': self.flip,
                          'save': lambda rest=rest: self.save(rest),
                          'quit': self.window.close}.get(verb)
                if action is None:
                    self._say(f"error: unknown command {line.strip()!r}")
                    continue
                self.app.post_to_main_thread(self.window, action)
                if verb == 'quit':
                    return
            self.app.post_to_main_thread(self.window, self.window.close)
        threading.Thread(target=read, daemon=True).start()

    def run(self):
        self._say('ready')
        self.app.run()
