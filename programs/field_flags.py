"""Command-line flags generated from dataclass fields: a setting's name, type, default, choices,
bound and help are written once, on its field (`flag_field`), and `define_flags` makes the
absl flags of a dataclass from them; `flag_values` reads them back as the dataclass's keyword
arguments; `read_mapping` reads a YAML or JSON mapping flag (Model Garden's `--params_override`)."""

import dataclasses
import os

from absl import flags

_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_bool,
           list: flags.DEFINE_list}  # fmt: skip


def flag_field(help, default=dataclasses.MISSING, flag=None, type=None, choices=None, lower_bound=None, **metadata):
    """A dataclass field with a flag: `--<flag>` (default: the field's name) of `type` (default:
    the field's annotation; `list` for a comma-separated list), an enum flag when `choices` is
    given, with `lower_bound` and `help`; `metadata` is kept with them (e.g. the task a flag
    applies to)."""
    metadata.update(flag=flag, help=help, type=type, choices=choices, lower_bound=lower_bound)
    return dataclasses.field(default=default, metadata=metadata)


def flag_fields(cls):
    """The fields of the dataclass `cls` (or an instance) that have a flag, in field order."""
    return [field for field in dataclasses.fields(cls) if "help" in field.metadata]


def flag_name(field):
    """The name of `field`'s flag."""
    return field.metadata["flag"] or field.name


def define_flags(cls, flag_values, defaults=True):
    """Defines on `flag_values` one flag per flag field of the dataclass `cls`; its default is the
    field's, or None for every flag with `defaults=False` (None: keep the value found elsewhere,
    e.g. a recipe's)."""
    for field in flag_fields(cls):
        metadata = field.metadata
        has_default = field.default is not dataclasses.MISSING
        default = field.default if defaults and has_default else None
        if metadata["choices"]:
            flags.DEFINE_enum(flag_name(field), default, metadata["choices"], metadata["help"], flag_values=flag_values)
            continue
        bound = {} if metadata["lower_bound"] is None else {"lower_bound": metadata["lower_bound"]}
        define = _DEFINE[metadata["type"] or field.type]
        define(flag_name(field), default, metadata["help"], flag_values=flag_values, **bound)


def flag_values(cls, flag_values):
    """{field name: its flag's value} of the flag fields of the dataclass `cls`."""
    return {field.name: flag_values[flag_name(field)].value for field in flag_fields(cls)}


def read_mapping(value):
    """The mapping that `value` holds, or that the file at the path `value` holds, as YAML or
    JSON (JSON is YAML); {} for None or an empty value.

    Raises:
        ValueError: text that is not YAML, or not a mapping.
    """
    import yaml  # Only the trainer reads a mapping (the train extra installs PyYAML).

    if not value:
        return {}
    text = value
    if os.path.isfile(value):
        with open(value) as f:
            text = f.read()
    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not YAML or JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"expected a mapping (e.g. '{{run: {{seed: 1}}}}' or a file holding one), received {value!r}")
    return mapping
