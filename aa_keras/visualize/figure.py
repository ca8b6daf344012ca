"""Pictures of attention maps with matplotlib: the image with the query marked, each head's map
over it, and the mean of the heads, one row per layer."""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aa_keras.atomic_file import write_atomically

PANEL_INCHES = 2.0
DPI = 100


def _display_image(image):
    """(H, W, C) image as grey levels in [0, 1] (min-max scaled: any input range shows)."""
    grey = np.asarray(image, np.float64).mean(axis=-1)
    span = grey.max() - grey.min()
    return (grey - grey.min()) / span if span > 0 else np.zeros_like(grey)


def attention_figure(image, query, maps):
    """One row per layer: the image with the query marked, then each head's attention map
    overlaid on the image (each cell of the attention grid spread over the pixels it covers),
    then the mean of the heads.

    Args:
        image: (H, W, C) image as the model takes it.
        query: (y, x) pixel of the query.
        maps: {layer name: (Nh, Ha, Wa) attention weights of this image and query}, as
            `attention_maps` gives them (`maps[name][b, q]`).

    Returns:
        A `matplotlib.figure.Figure` (not registered with pyplot) of
        (2 + most heads) x (layers) panels of PANEL_INCHES at DPI dots per inch.
    """
    grey = _display_image(image)
    height, width = grey.shape
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # the grid covers the whole image
    columns = 2 + max(m.shape[0] for m in maps.values())
    figure = Figure(figsize=(PANEL_INCHES * columns, PANEL_INCHES * len(maps)), dpi=DPI)
    FigureCanvasAgg(figure)
    # No ticks: laying out the titles would measure them even on hidden axes.
    axes = figure.subplots(len(maps), columns, squeeze=False, subplot_kw={"xticks": [], "yticks": []})
    for row, (name, heads) in zip(axes, maps.items()):
        models, _, layer = name.rpartition("/")  # a nested layer's path: its models on a line of their own
        layer = f"{layer}, grid {heads.shape[1]}x{heads.shape[2]}"
        panels = [(f"{models}/\n{layer}" if models else layer, None)]
        panels += [(f"head {n} (max {m.max():.3g})", m) for n, m in enumerate(heads)]
        panels.append((f"mean of {len(heads)} heads", heads.mean(axis=0)))
        for ax in row:
            ax.set_axis_off()
        for ax, (title, weights) in zip(row, panels):
            ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            if weights is not None:
                ax.imshow(weights, cmap="magma", vmin=0.0, vmax=weights.max(), alpha=0.65, extent=extent,
                          interpolation="nearest")  # fmt: skip
            ax.plot(query[1], query[0], marker="+", color="cyan", markersize=12, markeredgewidth=2)
            ax.set_title(title, fontsize=8)
    # Fixed margins (in panel fractions) leave room for titles of two lines; tight_layout costs
    # more than the drawing.
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.2 / len(maps), wspace=0.08,
                           hspace=0.25)  # fmt: skip
    return figure


def figure_to_array(figure):
    """The figure rendered as a (height, width, 3) uint8 RGB array."""
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(figure, path):
    """Writes the figure to `path` as PNG atomically (the file is whole or untouched), creating
    its folder if missing; the file gets the mode the umask gives."""
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
