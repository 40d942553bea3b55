"""Checkpoints for every family: fetch (hash-checked), read, remap, load strictly.

    state = hub.load_state_dict(source, known_sha256=PUBLISHED_SHA256)
    state = hub.rename_keys(state, RULES)  # an official layout's names -> revbench's
    hub.load_strict(model, state, skip=("head.",))

`source` is a local path or a `file://`, `http://` or `https://` URL. URLs are downloaded
into `cache_dir()` ($REVBENCH_CACHE, default ~/.cache/revbench) and reused from there.

The hash check, before anything is loaded: a file whose name is in `known_sha256` (a
family's published checkpoints) must carry that digest; a file whose name carries a
SHA-256 prefix (`<stem>-<8 hex digits>.<ext>`, the torch.hub and mmpretrain convention)
must start with it. The hash names the file, so a README that swaps two download links
cannot swap weights. A download that fails the check is deleted, a user's own local file
never is; `check_hash=False` skips the check (your own file under a published name).

The file is read as tensors only (nothing in it is executed) and unwrapped from the
containers training scripts save (`state_dict`, PySlowFast's `model_state`, RevCol's
`model`). Each family file owns the key remaps from its official layouts; the pieces they
share are here: `rename_keys` (regex rules), `fuse_qkv` (separate q, k, v weights into
one projection) and `fit_pos_embed` (drop a class-token slot, resample to the model's grid).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from math import isqrt
from pathlib import Path

import torch
from torch import Tensor, nn

StateDict = dict[str, Tensor]

# torch.hub / mmpretrain file names: <stem>-<first 8 hex digits of the SHA-256>.<ext>
_HASH_PREFIX = re.compile(r"-([0-9a-f]{8})\.[A-Za-z.]+$")

# Keys under which official training scripts nest the weights, tried in this order.
CONTAINER_KEYS = ("state_dict", "model_state", "model")


class ChecksumError(RuntimeError):
    """A checkpoint whose SHA-256 differs from the published one or its name's prefix."""


def cache_dir() -> Path:
    return Path(os.environ.get("REVBENCH_CACHE", Path.home() / ".cache" / "revbench"))


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix a file name carries (`...-a3a34f5c.pth`), or None."""
    match = _HASH_PREFIX.search(name)
    return match.group(1) if match else None


# ------------------------------------------------------------------------------ fetch


def _download(url: str, dst: Path) -> None:
    # torch.hub writes to a temporary file and moves it into place: no partial file is
    # left under the final name if the transfer fails. urllib handles file:// too.
    torch.hub.download_url_to_file(url, str(dst), progress=False)


def _verify(path: Path, known_sha256: Mapping[str, str], delete_on_mismatch: bool) -> None:
    published = known_sha256.get(path.name)
    prefix = None if published else hash_prefix(path.name)
    if published is None and prefix is None:
        return  # a name nothing is published for: the user's own file
    actual = sha256(path)
    if actual == published or (prefix is not None and actual.startswith(prefix)):
        return
    if delete_on_mismatch:
        path.unlink(missing_ok=True)
    problem = (
        f"differs from the published {published}"
        if published
        else f"does not start with {prefix}, the prefix its name carries"
    )
    raise ChecksumError(
        f"{path.name}: SHA-256 {actual} {problem}; the file is damaged or not the published one"
        + ("; the download was deleted" if delete_on_mismatch else "")
    )


def fetch(
    source: str | os.PathLike,
    known_sha256: Mapping[str, str] | None = None,
    check_hash: bool = True,
) -> Path:
    """A local path for `source` (a URL is downloaded into `cache_dir()` once), its hash
    checked unless `check_hash` is False."""
    known = (known_sha256 or {}) if check_hash else None
    text = os.fspath(source)
    url = urllib.parse.urlparse(text)
    if url.scheme not in ("http", "https", "file"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {text} does not exist")
        if known is not None:
            _verify(path, known, delete_on_mismatch=False)
        return path
    dst = cache_dir() / Path(url.path).name
    if dst.is_file():
        if known is None:
            return dst
        try:
            _verify(dst, known, delete_on_mismatch=True)
            return dst
        except ChecksumError:
            pass  # a stale or damaged cache entry: fetch it again
    dst.parent.mkdir(parents=True, exist_ok=True)
    _download(text, dst)
    if known is not None:
        _verify(dst, known, delete_on_mismatch=True)
    return dst


# ------------------------------------------------------------------------------- read


def unwrap(checkpoint: Mapping) -> StateDict:
    """The state_dict inside a saved checkpoint (a flat one is returned as it is)."""
    for key in CONTAINER_KEYS:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            return dict(inner)
    return dict(checkpoint)


def load_state_dict(
    source: str | os.PathLike,
    known_sha256: Mapping[str, str] | None = None,
    check_hash: bool = True,
) -> StateDict:
    """The tensors of a checkpoint file, fetched and checked (`fetch`), then unwrapped."""
    path = fetch(source, known_sha256, check_hash)
    return unwrap(torch.load(path, map_location="cpu", weights_only=True))


def load_strict(model: nn.Module, state: Mapping[str, Tensor], skip: Iterable[str] = ()) -> None:
    """Load `state` into `model`, every key on both sides, except keys starting with a
    prefix in `skip` (parts the model was built without, such as a classifier head)."""
    prefixes = tuple(skip)
    model.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith(prefixes)}, strict=True
    )


# ------------------------------------------------------------------------------ remap


def rename_keys(state: Mapping[str, Tensor], rules: Iterable[tuple[str, str]]) -> StateDict:
    """Rename every key by the first rule (regex, replacement) that matches it.

    Keys no rule matches are kept as they are, so a strict load reports them.
    """
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]
    out: StateDict = {}
    for key, value in state.items():
        for pattern, repl in compiled:
            if pattern.search(key):
                key = pattern.sub(repl, key, count=1)
                break
        out[key] = value
    return out


def fuse_qkv(state: Mapping[str, Tensor]) -> StateDict:
    """Concatenate separate `<p>.q/k/v.{weight,bias}` into `<p>.qkv.*` (q, k, v order)."""
    out = dict(state)
    for key in [k for k in state if re.search(r"\.q\.(weight|bias)$", k)]:
        stem, kind = key.rsplit(".q.", 1)
        parts = [f"{stem}.{name}.{kind}" for name in ("q", "k", "v")]
        if all(p in out for p in parts):
            out[f"{stem}.qkv.{kind}"] = torch.cat([out.pop(p) for p in parts], dim=0)
    return out


def fit_pos_embed(pos_embed: Tensor, grid: int) -> Tensor:
    """A (1, N, C) position embedding for a grid x grid token map.

    A leading class-token slot (N = s * s + 1) is dropped; another grid is resampled
    bicubically, as timm resamples ViT position embeddings.
    """
    n = pos_embed.shape[1]
    if isqrt(n - 1) ** 2 == n - 1 and isqrt(n) ** 2 != n:
        pos_embed, n = pos_embed[:, 1:], n - 1
    side = isqrt(n)
    if side * side != n:
        raise ValueError(f"position embedding of {n} tokens is invalid: not a square grid")
    if side == grid:
        return pos_embed
    from timm.layers import resample_abs_pos_embed  # seconds to import: only when loading

    return resample_abs_pos_embed(pos_embed, [grid, grid], [side, side], num_prefix_tokens=0)
