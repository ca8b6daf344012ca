"""Attention maps: where each head of the attention-augmented layers looks, for chosen pixels.

`attention_maps` computes them for any model (`maps.py`); `attention_figure` draws them with
matplotlib (`figure.py`); `python -m aa_keras.visualize` (also `aa-visualize`) draws them for a
saved model and an image (`cli.py`). `import aa_keras` does not import this package.
"""

from aa_keras.visualize.figure import attention_figure, figure_to_array, save_png
from aa_keras.visualize.maps import attention_layers, attention_maps, query_cells

__all__ = ["attention_figure", "attention_layers", "attention_maps", "figure_to_array", "query_cells", "save_png"]
