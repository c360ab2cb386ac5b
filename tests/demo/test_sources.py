"""The demo's real-scan sources: pinned archives checked by SHA-256, unpacked without dpkg, cached and reused."""

from __future__ import annotations

import gzip
import hashlib
import io
import plistlib
import tarfile

import nibabel as nib
import numpy as np
import pytest

from restore_rwkv.demo import sources
from restore_rwkv.utils.errors import InputError


def _tar(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _ar(members: dict[str, bytes]) -> bytes:
    """A Debian-style ar archive (as dpkg-deb writes one: 60-byte headers, even padding)."""
    out = [b"!<arch>\n"]
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out += [header, data, b"\n" if len(data) % 2 else b""]
    return b"".join(out)


def test_a_debian_package_is_unpacked_and_invesalius_becomes_nifti(monkeypatch, tmp_path):
    volume = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 1000  # (slice, row, column) HU
    main = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": [3, 4, 5]}, "spacing": [0.5, 0.5, 2.0]}
    project = _tar({"tmp/main.plist": plistlib.dumps(main), "tmp/matrix.dat": volume.astype("<i2").tobytes()})
    deb = _ar({"debian-binary": b"2.0\n", "control.tar.xz": b"x" * 5,
               "data.tar.xz": _tar({"./usr/share/doc/invesalius-examples/examples/Cranium.inv3": project}, "w:xz")})
    source = sources.SOURCES["invesalius_cranium"]
    fake = sources.Source(**{**source.__dict__, "sha256": hashlib.sha256(deb).hexdigest()})
    monkeypatch.setitem(sources.SOURCES, "invesalius_cranium", fake)
    monkeypatch.setenv("RESTORE_RWKV_CACHE", str(tmp_path))
    fetched = []

    def fetch(url, timeout):
        fetched.append(url)
        return io.BytesIO(deb)

    monkeypatch.setattr("urllib.request.urlopen", fetch)
    path = sources.source_file("invesalius_cranium", quiet=True)
    assert fetched == [f"{sources.DEBIAN_MIRROR}/{source.archive}"]
    image = nib.load(path)
    data = np.asarray(image.dataobj)
    assert data.shape == (5, 4, 3) and data.dtype == np.int16
    np.testing.assert_array_equal(data, np.transpose(volume, (2, 1, 0)))  # (column, row, slice)
    assert image.header.get_zooms() == (0.5, 0.5, 2.0) and nib.aff2axcodes(image.affine) == ("L", "A", "S")
    assert sources.source_file("invesalius_cranium", quiet=True) == path and len(fetched) == 1  # cached: no fetch


def test_an_archive_that_is_not_the_pinned_one_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("RESTORE_RWKV_CACHE", str(tmp_path))
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: io.BytesIO(b"something else"))
    with pytest.raises(InputError, match="is not the pinned"):
        sources.source_file("colin27", quiet=True)
    assert not (tmp_path / "sources" / "colin27.nii.gz").exists()
    with pytest.raises(InputError, match="no ar header"):
        sources._deb_data(gzip.compress(b"not a deb"))
