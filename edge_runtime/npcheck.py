"""``.npy`` files and ``.npz`` archives read with their shapes and sizes checked before anything is allocated.

numpy sizes an array from its header alone: ``np.load`` of a 3 MB ``.npz`` whose member declares (32, 4096, 3072)
float32 zeros allocates and inflates 1.6 GB, and a ``.npy`` header may declare terabytes (RELIABILITY 32). Here
every header is read first (a few hundred bytes), compared with what the container really holds (the file's
size, the zip's declared uncompressed size, which also bounds what zipfile inflates) and refused over a cap; only
then is an array read.

A leaf: numpy and the standard library. Errors are :class:`NpyError` (a ValueError) with a one-line reason;
callers turn it into their own exit code (bad data 3 for user files, model rejected 4 for bundle files).
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

# numpy's own default for np.load; a header is a short dict literal.
MAX_HEADER_BYTES = 10_000
# A plain .npy read by read_npy: embeddings of a million frames x 512 dimensions (float32) are 2 GiB.
MAX_NPY_BYTES = 2 * 1024**3
# Plain numbers and text; no objects (pickles), no structured or subarray dtypes.
_KINDS = "biufcSU"
# The signature of a zip central-directory entry: zipfile builds one object per entry before anything is read.
_CENTRAL_ENTRY = b"PK\x01\x02"


class NpyError(ValueError):
    """A .npy or .npz that is malformed, inconsistent with its container, or over a cap (one-line message)."""


@dataclass(frozen=True)
class NpyHeader:
    """What a .npy header declares; ``offset``: bytes before the data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """Bytes of data the header declares (Python integers: no overflow for absurd shapes)."""
        return math.prod(self.shape) * self.dtype.itemsize

    def describe(self) -> str:
        """``float32 [32,4096,3072]``: the form used in messages."""
        return f"{self.dtype} [{','.join(str(d) for d in self.shape)}]"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def read_npy_header(fh: BinaryIO) -> NpyHeader:
    """Read the magic and header of a .npy stream positioned at its start; the stream is left at the data.

    Versions 1.0 and 2.0 (what numpy writes for plain arrays); NpyError for anything else.
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran_order, dtype = fmt.read_array_header_1_0(fh, max_header_size=MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, fortran_order, dtype = fmt.read_array_header_2_0(fh, max_header_size=MAX_HEADER_BYTES)
        else:
            raise NpyError(f"unsupported .npy version {version[0]}.{version[1]}")
        offset = fh.tell()
    except NpyError:
        raise
    except (ValueError, EOFError, OSError, SyntaxError) as exc:
        raise NpyError(f"not a valid .npy header ({_one_line(exc)})") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in _KINDS:
        raise NpyError(f"dtype {dtype} is not plain numbers or text")
    if any(d < 0 for d in shape):
        raise NpyError(f"header declares a negative dimension {list(shape)}")
    return NpyHeader(tuple(int(d) for d in shape), dtype, bool(fortran_order), int(offset))


def read_npy(path: str | os.PathLike, *, max_bytes: int = MAX_NPY_BYTES) -> np.ndarray:
    """The array of a .npy file whose header agrees with the file's size and declares at most ``max_bytes``.

    Checked before the data is read: the header must account for exactly the bytes after it (so a header
    declaring terabytes in a small file allocates nothing), and the data must be within the cap. OSError
    (missing, unreadable, a directory) passes through for the caller to name.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        header = read_npy_header(fh)
        held = size - header.offset
        if header.nbytes != held:
            raise NpyError(f"header declares {header.describe()} ({header.nbytes} bytes) but the file holds {held}")
        if header.nbytes > max_bytes:
            raise NpyError(f"{header.describe()} is {header.nbytes} bytes, over the {max_bytes}-byte cap")
        fh.seek(0)
        try:
            return np.lib.format.read_array(fh, allow_pickle=False)
        except (ValueError, EOFError) as exc:
            raise NpyError(f"not a valid .npy file ({_one_line(exc)})") from None


def npz_headers(data: bytes, *, max_members: int, max_bytes: int) -> dict[str, NpyHeader]:
    """The header of every member of the .npz ``data``, keyed by name without ``.npy``; no array is loaded.

    Refused (NpyError): more than ``max_members`` members (counted before zipfile parses the directory),
    members that are not ``NAME.npy`` or appear twice, members whose declared uncompressed sizes add up to more
    than ``max_bytes``, and any member whose header does not account for exactly its declared size.
    """
    if data.count(_CENTRAL_ENTRY) > max_members:
        raise NpyError(f"more than {max_members} members")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise NpyError(f"not a zip archive ({_one_line(exc)})") from None
    with archive:
        infos = archive.infolist()
        total = sum(info.file_size for info in infos)
        if total > max_bytes:
            raise NpyError(f"members inflate to {total} bytes, over the {max_bytes}-byte cap")
        headers: dict[str, NpyHeader] = {}
        for info in infos:
            name = info.filename[:-4]
            if not info.filename.endswith(".npy") or not name or name in headers:
                raise NpyError(f"unexpected member {info.filename!r}")
            try:
                with archive.open(info) as fh:
                    header = read_npy_header(fh)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError) as exc:  # encrypted, unknown method
                raise NpyError(f"member {info.filename}: {_one_line(exc)}") from None
            if header.offset + header.nbytes != info.file_size:
                raise NpyError(
                    f"member {info.filename} declares {header.describe()} ({header.nbytes} bytes) but holds "
                    f"{info.file_size - header.offset}"
                )
            headers[name] = header
    return headers


def load_npz(data: bytes, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The named members of the .npz ``data`` as arrays; call :func:`npz_headers` first to check them."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in names}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise NpyError(f"cannot read ({_one_line(exc)})") from None


def grid_layout(
    headers: dict[str, NpyHeader],
    grid: Iterable[str],
    stacked: Iterable[str],
    *,
    max_side: int,
    max_channels: int,
    max_other_bytes: int,
) -> tuple[int, int, int]:
    """``(C, h, w)`` of an archive of arrays on one spatial grid: ``grid`` members (h, w), ``stacked`` (C, h, w).

    Those must be present with exactly these shapes, h and w within 1..``max_side`` and C within
    1..``max_channels``; every other member may hold at most ``max_other_bytes``. With the grid and the channels
    fixed, so is every array's size: the cap of such a file is its grid x channels. NpyError ("lacks ...",
    "has inconsistent shapes (...)", "member ... is over ...") otherwise.
    """
    grid_names, stacked_names = list(grid), list(stacked)
    missing = [name for name in grid_names + stacked_names if name not in headers]
    if missing:
        raise NpyError(f"lacks {', '.join(missing)}")
    first = headers[grid_names[0]].shape
    channels = headers[stacked_names[0]].shape[0] if headers[stacked_names[0]].shape else 0
    ok = (
        len(first) == 2
        and all(1 <= d <= max_side for d in first)
        and all(headers[name].shape == first for name in grid_names)
        and 1 <= channels <= max_channels
        and all(headers[name].shape == (channels, *first) for name in stacked_names)
    )
    if not ok:
        shapes = ", ".join(f"{name} {list(headers[name].shape)}" for name in grid_names + stacked_names)
        raise NpyError(f"has inconsistent shapes ({shapes})")
    for name, header in headers.items():
        if name not in grid_names and name not in stacked_names and header.nbytes > max_other_bytes:
            raise NpyError(f"member {name} ({header.describe()}) is over the {max_other_bytes}-byte cap")
    return channels, first[0], first[1]
