"""absl flags derived from config dataclass fields, and configs built back from those flags.

A field made with `mbakt_tf.config.config_field(default, help, choices)`
becomes a flag of the same name, default, help and choices, of the kind its
type says: bool, integer, float, string, enum (with choices), or a
comma-separated list (a tuple of ints). So a default is written once, in the
dataclass. Light: absl and the config modules only, no TensorFlow.

Example:
```python
define_config_flags(TrainConfig, ["epochs", "optimizer"])   # --epochs=10, --optimizer=<sgd|adam|adamw>
config = config_from_flags(TrainConfig)   # TrainConfig(epochs=FLAGS.epochs, optimizer=FLAGS.optimizer)
```
"""

import dataclasses
import typing

from absl import flags

FLAGS = flags.FLAGS
flags.disclaim_key_flags()  # --helpfull lists each flag under the module that asked for it


def define_config_flags(config_class, names, choices=None):
    """Defines one flag per field of `config_class` in `names`.

    Args:
        config_class: a dataclass whose fields were made with `config_field`.
        names: the fields that get a flag here (flags are grouped by concern).
        choices: `{field name: choices}` for fields whose choices the dataclass
            cannot name itself (e.g. backbone names).
    """
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    for name in names:
        field = fields[name]
        default, help_text = field.default, field.metadata["help"]
        field_choices = (choices or {}).get(name) or field.metadata.get("choices")
        kind = value_type(field)
        if field_choices:
            flags.DEFINE_enum(name, default, field_choices, help_text)
        elif kind is bool:
            flags.DEFINE_bool(name, default, help_text)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text)
        elif kind is str:
            flags.DEFINE_string(name, default, help_text)
        elif kind is tuple:
            flags.DEFINE_list(name, None if default is None else [str(v) for v in default], help_text)
        else:
            raise TypeError(f"{config_class.__name__}.{name}: no flag kind for {field.type}.")


def config_from_flags(config_class, **overrides):
    """`config_class(...)` from the flags defined for its fields; `overrides` win.

    Fields without a defined flag keep their defaults; list flags become
    tuples of ints (a `ValueError` for anything else).
    """
    values = {}
    for field in dataclasses.fields(config_class):
        if field.name in FLAGS:
            value = FLAGS[field.name].value
            if value_type(field) is tuple and value is not None:
                value = int_tuple(field.name, value)
            values[field.name] = value
    values.update(overrides)
    return config_class(**values)


def value_type(field):
    """The type of a field's value: `Optional[X]` is X, `Tuple[int, ...]` is `tuple`."""
    kind = field.type
    if typing.get_origin(kind) is typing.Union:
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return typing.get_origin(kind) or kind


def int_tuple(name, values):
    try:
        return tuple(int(v) for v in values)
    except ValueError as error:
        raise ValueError(f"--{name}: expected a comma-separated list of integers, got {values}") from error
