"""Read and write IDX files (the MNIST / Fashion-MNIST format), plain or gzipped.

An IDX file is a 4-byte magic number -- two zero bytes, a type code, the
number of dimensions -- then one big-endian uint32 per dimension, then the
values in C order, big-endian. Files named `*.gz` must be gzip streams.
Every problem with a file is a `ValueError` that names the file.

Example:
>>> import os, tempfile, numpy as np
>>> path = os.path.join(tempfile.mkdtemp(), "x-idx3-ubyte.gz")
>>> write_idx(path, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
>>> read_idx(path).shape
(2, 3, 4)
"""

import gzip
import os
import zlib

import numpy as np

# IDX type code -> numpy dtype (big-endian, as stored).
_CODE_TO_DTYPE = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_TO_CODE = {dtype.newbyteorder("="): code for code, dtype in _CODE_TO_DTYPE.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path):
    """Reads the IDX file at `path` (gzipped if its name ends in `.gz`) into a numpy array.

    Returns a writable array in native byte order with the file's shape and
    type (uint8 for MNIST-style images and labels).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not gzip although named `.gz`, its gzip stream
            is damaged, its magic number is wrong, or its data is shorter or
            longer than its header says.

    Example:
    >>> labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
    >>> labels.shape, labels.dtype  # doctest: +SKIP
    ((10000,), dtype('uint8'))
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        if not raw.startswith(_GZIP_MAGIC):
            raise ValueError(
                f"{path}: named .gz but is not a gzip file (first bytes {raw[:4]!r}). "
                "Re-download it, or drop the .gz suffix if it is an uncompressed IDX file."
            )
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: damaged or truncated gzip data ({e}).") from e
    return _parse_idx(raw, path)


def _parse_idx(raw, path):
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes).")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or code not in _CODE_TO_DTYPE:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000 followed by a type "
            f"code in {{{', '.join(hex(c) for c in _CODE_TO_DTYPE)}}} and the rank). "
            "Not an IDX file, or a corrupt one."
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: truncated IDX header (rank {ndim} needs {header_size} bytes).")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _CODE_TO_DTYPE[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_size
    if actual < expected:
        raise ValueError(
            f"{path}: truncated IDX data: header says shape {shape} ({expected} bytes of "
            f"{dtype.newbyteorder('=').name}) but only {actual} bytes follow."
        )
    if actual > expected:
        raise ValueError(
            f"{path}: {actual - expected} unexpected bytes after the IDX data of shape {shape}."
        )
    array = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header_size)
    return array.reshape(shape).astype(dtype.newbyteorder("="))  # copy: writable, native order


def write_idx(path, array):
    """Writes `array` to `path` as an IDX file, gzipped if the name ends in `.gz`.

    Supports uint8, int8, int16, int32, float32 and float64 arrays of rank
    1 to 255. Meant for tests and small fixtures.

    Example:
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
    >>> read_idx(path).tolist()
    [3, 1, 4]
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _DTYPE_TO_CODE:
        raise ValueError(
            f"write_idx: dtype {array.dtype} has no IDX type code; use one of "
            f"{sorted(d.name for d in _DTYPE_TO_CODE)}."
        )
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx: rank must be 1..255, got {array.ndim}.")
    code = _DTYPE_TO_CODE[native]
    payload = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, dtype=">u4").tobytes()
        + np.ascontiguousarray(array, dtype=_CODE_TO_DTYPE[code]).tobytes()
    )
    path = os.fspath(path)
    if path.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    with open(path, "wb") as f:
        f.write(payload)
