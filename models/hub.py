"""Checkpoints for every family: fetch (with a SHA-256 check), read, load strictly.

    state = hub.load_state_dict(source, known_sha256=PUBLISHED_SHA256)
    hub.load_strict(model, state, skip=("head.",))

`source` is a local path or a `file://`, `http://` or `https://` URL. URLs are downloaded
into `cache_dir()` ($REVBENCH_CACHE, default ~/.cache/revbench) and reused from there. A
file whose name is in `known_sha256` (a family's published checkpoints) must carry that
digest, checked before anything is loaded; a download that fails the check is deleted, a
user's own local file never is. Files under other names are the user's and load unchecked.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn


class ChecksumError(RuntimeError):
    """A checkpoint whose SHA-256 differs from the published one."""


def cache_dir() -> Path:
    return Path(os.environ.get("REVBENCH_CACHE", Path.home() / ".cache" / "revbench"))


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dst: Path) -> None:
    # torch.hub writes to a temporary file and moves it into place: no partial file is
    # left under the final name if the transfer fails. urllib handles file:// too.
    torch.hub.download_url_to_file(url, str(dst), progress=False)


def _verify(path: Path, known_sha256: Mapping[str, str], delete_on_mismatch: bool) -> None:
    expected = known_sha256.get(path.name)
    if expected is None:
        return
    actual = sha256(path)
    if actual != expected:
        if delete_on_mismatch:
            path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{path.name}: SHA-256 {actual} differs from the published {expected}"
            + ("; the download was deleted" if delete_on_mismatch else "")
        )


def fetch(source: str | os.PathLike, known_sha256: Mapping[str, str] | None = None) -> Path:
    """A verified local path for `source` (a URL is downloaded into `cache_dir()` once)."""
    known_sha256 = known_sha256 or {}
    text = os.fspath(source)
    url = urllib.parse.urlparse(text)
    if url.scheme not in ("http", "https", "file"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {text} does not exist")
        _verify(path, known_sha256, delete_on_mismatch=False)
        return path
    dst = cache_dir() / Path(url.path).name
    if dst.is_file():
        try:
            _verify(dst, known_sha256, delete_on_mismatch=True)
            return dst
        except ChecksumError:
            pass  # a stale or damaged cache entry: fetch it again
    dst.parent.mkdir(parents=True, exist_ok=True)
    _download(text, dst)
    _verify(dst, known_sha256, delete_on_mismatch=True)
    return dst


def load_state_dict(
    source: str | os.PathLike, known_sha256: Mapping[str, str] | None = None
) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (tensors only: nothing in it is executed)."""
    return torch.load(fetch(source, known_sha256), map_location="cpu", weights_only=True)


def load_strict(model: nn.Module, state: Mapping[str, Tensor], skip: Iterable[str] = ()) -> None:
    """Load `state` into `model`, every key on both sides, except keys starting with a
    prefix in `skip` (parts the model was built without, such as a classifier head)."""
    prefixes = tuple(skip)
    model.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith(prefixes)}, strict=True
    )
