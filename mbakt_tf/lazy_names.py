"""A package's public names, each imported from its module the first time it is asked for.

`mbakt_tf` and `mbakt_tf.export` stay light this way: importing the package
loads neither Keras nor TensorFlow until a name that needs them is used.

Example:
```python
# in a package's __init__.py
__getattr__, __dir__, __all__ = lazy_names.lazy_package(
    __name__, __path__, {"MBAKT": "mbakt_tf.model"}, globals())
```
"""

import importlib
import pkgutil


def lazy_package(package, path, names, namespace):
    """(`__getattr__`, `__dir__`, `__all__`) for `package`: `names` maps a public name to its module;
    every submodule under `path` is public too. A loaded name is cached in `namespace`."""
    submodules = sorted(module.name for module in pkgutil.iter_modules(path))
    public = sorted(names) + submodules

    def __getattr__(name):
        """Imports a public name's module, or a submodule, the first time it is asked for."""
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            namespace[name] = value
            return value
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")  # also sets the package attribute
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__, public
