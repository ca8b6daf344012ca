"""Argument checks shared by the package: errors in the form "Invalid `x`: expected ..., received x=..."."""

import numbers

import numpy as np


def is_int(value):
    """True for Python and NumPy integers, False for bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def positive_int(name, value, optional=False):
    """`value` as an int; a ValueError naming `name` unless it is a positive int (or, with
    `optional`, None, which is returned as is)."""
    if optional and value is None:
        return None
    if not is_int(value) or value <= 0:
        valid = "a positive int or None" if optional else "a positive int"
        raise ValueError(f"Invalid `{name}`: expected {valid}, received {name}={value!r}.")
    return int(value)


def positive_pair(name, value):
    """An int or a pair of ints, all positive, as a tuple of two ints."""
    pair = (value, value) if is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or not all(is_int(v) and v > 0 for v in pair):
        raise ValueError(
            f"Invalid `{name}`: expected a positive int or a tuple of two positive ints, "
            f"received {name}={value!r}."
        )
    return tuple(int(v) for v in pair)


def unfit_class_names(names):
    """The names among `names` that a labels file cannot hold: empty ones, and those with a line
    break or leading or trailing spaces."""
    return [name for name in names if not name or name != name.strip() or len(name.splitlines()) != 1]
