"""Published checkpoints in their official layouts load strictly and give the same outputs.

Nothing downloads: each test takes a tiny model, writes its weights the way the official
code names them (the layout rules restated here, independently of models/, as the
inverse of revbench's remaps), saves them in the official container, loads the file with
`create(..., pretrained=path)` and compares outputs with the model it was written from.

Layouts: RevViT from mmpretrain (`backbone.layers.N.attn.qkv`, `ffn.layers`) and from
PySlowFast (`rev_backbone.layers.N.F.attn.q/k/v`); Rev-MViT from PySlowFast; RevCol from
megvii-research/RevCol (`subnetI.levelL.fusion`, intermediate-supervision heads).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from revbench.models import create, hub
from revbench.models.hub import ChecksumError

pytestmark = pytest.mark.usefixtures("one_thread")

REVVIT = dict(embed_dim=32, depth=3, num_heads=2, img_size=32, patch_size=8, num_classes=10)
REV_MVIT = dict(
    embed_dim=16, num_heads=2, depth=6, transitions=(1, 3), img_size=32, kv_stride=2,
    num_classes=10,
)  # fmt: skip
REVCOL = dict(channels=(8, 16, 32, 64), layers=(1, 1, 2, 1), img_size=64, num_classes=10)


def randomized(name: str, **overrides) -> nn.Module:
    """A tiny model whose every tensor is random (no zero bias or unit norm weight hides a
    misplaced key)."""
    torch.manual_seed(0)
    model = create(name, **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def renamed(state: dict[str, Tensor], rules: list[tuple[str, str]]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            if re.search(pattern, key):
                key = re.sub(pattern, repl, key, count=1)
                break
        else:
            raise AssertionError(f"no rule for {key}")
        out[key] = value
    return out


def assert_same_outputs(loaded: nn.Module, source: nn.Module, res: int) -> None:
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), source.eval()(x), rtol=1e-6, atol=1e-6)


def save(obj: dict, path: Path) -> Path:
    torch.save(obj, path)
    return path


def with_hash_prefix(path: Path, stem: str) -> Path:
    """Rename to `<stem>-<first 8 hex of the SHA-256>.pth`, mmpretrain's naming."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return path.rename(path.with_name(f"{stem}-{digest[:8]}.pth"))


# ------------------------------------------------------------------------------ RevViT

# revbench name -> mmpretrain name (RevVisionTransformer backbone + LinearClsHead)
MMPRETRAIN = [
    (r"^patch_embed\.", "backbone.patch_embed.projection."),
    (r"^pos_embed$", "backbone.pos_embed"),
    (r"^blocks\.(\d+)\.F\.norm\.", r"backbone.layers.\1.ln1."),
    (r"^blocks\.(\d+)\.F\.attn\.", r"backbone.layers.\1.attn."),
    (r"^blocks\.(\d+)\.G\.norm\.", r"backbone.layers.\1.ln2."),
    (r"^blocks\.(\d+)\.G\.fc1\.", r"backbone.layers.\1.ffn.layers.0.0."),
    (r"^blocks\.(\d+)\.G\.fc2\.", r"backbone.layers.\1.ffn.layers.1."),
    (r"^norm\.", "backbone.ln1."),
    (r"^head\.", "head.fc."),
]


def mmpretrain_state(model: nn.Module) -> dict[str, Tensor]:
    return renamed(model.state_dict(), MMPRETRAIN)


def test_revvit_mmpretrain_layout_loads_with_hash_check(tmp_path: Path) -> None:
    source = randomized("revvit_small", **REVVIT)
    path = save({"meta": {"epoch": 300}, "state_dict": mmpretrain_state(source)}, tmp_path / "f")
    path = with_hash_prefix(path, "revvit-small_3rdparty_in1k_20221213")
    loaded = create("revvit_small", **REVVIT, pretrained=path)  # the hash is checked
    assert_same_outputs(loaded, source, 32)


def test_revvit_mmpretrain_wrong_hash_prefix_raises_unless_check_hash_false(
    tmp_path: Path,
) -> None:
    source = randomized("revvit_small", **REVVIT)
    path = save({"state_dict": mmpretrain_state(source)}, tmp_path / "revvit-s-0badc0de.pth")
    with pytest.raises(ChecksumError, match="does not start with 0badc0de"):
        create("revvit_small", **REVVIT, pretrained=path)
    assert path.is_file()  # the user's file is not deleted
    loaded = create("revvit_small", **REVVIT, pretrained=path, check_hash=False)
    assert_same_outputs(loaded, source, 32)


def test_revvit_mmpretrain_class_token_and_its_position_slot_are_dropped(
    tmp_path: Path,
) -> None:
    source = randomized("revvit_small", **REVVIT)
    state = mmpretrain_state(source)
    C = REVVIT["embed_dim"]
    # As mmpretrain's metafile counts them: a class token and a 1 + 4 x 4 slot embedding.
    state["backbone.cls_token"] = torch.randn(1, 1, C)
    state["backbone.pos_embed"] = torch.cat([torch.randn(1, 1, C), state["backbone.pos_embed"]], 1)
    path = save({"state_dict": state}, tmp_path / "with_cls.pth")
    loaded = create("revvit_small", **REVVIT, pretrained=path)
    assert loaded.pos_embed.shape == (1, 16, C)
    assert_same_outputs(loaded, source, 32)


def test_revvit_loads_at_another_resolution_with_bicubic_position_embedding(
    tmp_path: Path,
) -> None:
    source = randomized("revvit_small", **REVVIT)
    path = save({"state_dict": mmpretrain_state(source)}, tmp_path / "w.pth")
    loaded = create("revvit_small", **{**REVVIT, "img_size": 48}, pretrained=path)
    C = REVVIT["embed_dim"]
    grid = source.pos_embed.detach().reshape(1, 4, 4, C).permute(0, 3, 1, 2)  # (1, C, 4, 4)
    # timm's resampling: bicubic with antialias (its default; PIL's cubic kernel).
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(loaded.pos_embed.detach(), want.flatten(2).transpose(1, 2))
    assert torch.equal(loaded.blocks[2].G.fc2.weight, source.blocks[2].G.fc2.weight)


def pyslowfast_revvit_state(model: nn.Module) -> dict[str, Tensor]:
    """PySlowFast's MViT with MVIT.REV: q, k and v are separate Linear layers."""
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"blocks\.(\d+)\.F\.attn\.qkv\.(weight|bias)$", key)
        if m:
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"rev_backbone.layers.{m[1]}.F.attn.{name}.{m[2]}"] = part.clone()
            continue
        key = re.sub(r"^patch_embed\.", "patch_embed.proj.", key)
        key = re.sub(r"^blocks\.(\d+)\.F\.", r"rev_backbone.layers.\1.F.", key)
        key = re.sub(r"^blocks\.(\d+)\.G\.norm\.", r"rev_backbone.layers.\1.G.norm.", key)
        key = re.sub(r"^blocks\.(\d+)\.G\.fc", r"rev_backbone.layers.\1.G.mlp.fc", key)
        key = re.sub(r"^head\.", "head.projection.", key)
        out[key] = value
    return out


def test_revvit_pyslowfast_layout_loads(tmp_path: Path) -> None:
    source = randomized("revvit_small", **REVVIT)
    state = pyslowfast_revvit_state(source)
    assert "rev_backbone.layers.2.F.attn.k.weight" in state and "norm.weight" in state
    path = save({"model_state": state, "epoch": 300}, tmp_path / "REV_VIT_S.pyth")
    assert_same_outputs(create("revvit_small", **REVVIT, pretrained=path), source, 32)


def test_revvit_mislabelled_file_fails_the_strict_load(tmp_path: Path) -> None:
    state = mmpretrain_state(randomized("revvit_small", **REVVIT))
    state["backbone.layers.0.extra.weight"] = torch.zeros(1)
    path = save({"state_dict": state}, tmp_path / "extra.pth")
    with pytest.raises(RuntimeError, match="Unexpected key.*extra.weight"):
        create("revvit_small", **REVVIT, pretrained=path)


def test_revvit_pretrained_true_fetches_the_published_file_and_trusts_its_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("REVBENCH_CACHE", str(cache))
    urls = []

    def fake_download(url: str, dst: Path) -> None:  # a file that is not the published one
        urls.append(url)
        torch.save({"state_dict": mmpretrain_state(randomized("revvit_small", **REVVIT))}, dst)

    monkeypatch.setattr(hub, "_download", fake_download)
    with pytest.raises(ChecksumError, match="does not start with a3a34f5c"):
        create("revvit_small", **REVVIT, pretrained=True)
    assert urls == [
        "https://download.openmmlab.com/mmclassification/v0/revvit/"
        "revvit-small_3rdparty_in1k_20221213-a3a34f5c.pth"
    ]
    assert list(cache.iterdir()) == []  # the damaged download is deleted


def test_pretrained_url_downloads_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = randomized("revvit_small", **REVVIT)
    path = save({"state_dict": mmpretrain_state(source)}, tmp_path / "w")
    path = with_hash_prefix(path, "revvit-small")
    monkeypatch.setenv("REVBENCH_CACHE", str(tmp_path / "cache"))
    assert_same_outputs(create("revvit_small", **REVVIT, pretrained=path.as_uri()), source, 32)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]


def test_pretrained_true_without_published_weights_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="revvit_large.*revvit_small, revvit_base"):
        create("revvit_large", pretrained=True)


# ---------------------------------------------------------------------------- Rev-MViT


def pyslowfast_rev_mvit_state(model: nn.Module) -> dict[str, Tensor]:
    """PySlowFast numbers the 6 blocks 0..5; revbench's layers are runs and transitions:
    layers.0 = [block 0], layers.1 = block 1, layers.2 = [block 2], layers.3 = block 3,
    layers.4 = [blocks 4, 5]."""
    where = {"0.0": 0, "1": 1, "2.0": 2, "3": 3, "4.0": 4, "4.1": 5}
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"layers\.(\d+(?:\.\d+)?)\.(.*)$", key)
        if m:
            block, rest = where[m[1]], m[2]
            if "." not in m[1]:  # a transition: revbench's names -> PySlowFast's F and G
                rest = re.sub(r"^fuse\.0\.", "pre_q_fuse.fuse_fn.fc1.", rest)
                rest = re.sub(r"^fuse\.2\.", "pre_q_fuse.fuse_fn.fc2.", rest)
                rest = re.sub(r"^norm\.", "F.norm.", rest)
                rest = re.sub(r"^attn\.", "F.attn.", rest)
                rest = re.sub(r"^mlp\.norm\.", "G.norm.", rest)
                rest = re.sub(r"^mlp\.fc", "G.mlp.fc", rest)
            else:
                rest = re.sub(r"^G\.fc", "G.mlp.fc", rest)
            rest = re.sub(r"attn\.pool_([qkv])\.norm\.", r"attn.norm_\1.", rest)
            if re.search(r"attn\.pool_[qkv]\.conv\.weight$", rest):
                rest = rest.replace(".conv.weight", ".weight")
                value = value.unsqueeze(2)  # Conv3d kernel (1, k, k)
            prefix = f"rev_backbone.layers.{block}."
            if rest.endswith(("attn.qkv.weight", "attn.qkv.bias")):
                kind = rest.rsplit(".", 1)[1]
                stem = rest[: -len(f"qkv.{kind}")]
                for name, part in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{prefix}{stem}{name}.{kind}"] = part.clone()
                continue
            key = prefix + rest
        else:
            key = re.sub(r"^patch_embed\.", "patch_embed.proj.", key)
            key = re.sub(r"^head\.", "head.projection.", key)
        out[key] = value
    return out


def test_rev_mvit_pyslowfast_layout_loads(tmp_path: Path) -> None:
    source = randomized("rev_mvit_base", **REV_MVIT)
    state = pyslowfast_rev_mvit_state(source)
    assert state["rev_backbone.layers.3.F.attn.pool_q.weight"].ndim == 5
    assert "rev_backbone.layers.5.F.attn.norm_v.bias" in state
    path = save({"model_state": state}, tmp_path / "REV_MVIT_B.pyth")
    assert_same_outputs(create("rev_mvit_base", **REV_MVIT, pretrained=path), source, 32)


# ------------------------------------------------------------------------------ RevCol


# Inside a column (after `columns.I.` or `columns.J.K.`): revbench -> official names.
REVCOL_COLUMN = [
    (r"^level(\d)\.down\.", r"level\1.fusion.down."),
    (r"^level(\d)\.up\.proj\.", r"level\1.fusion.up.channel_reschedule.0."),
    (r"^level(\d)\.up\.norm\.", r"level\1.fusion.up.channel_reschedule.1."),
    (r"^", ""),  # alphas and ConvNeXt blocks keep their names
]
# Intermediate-supervision heads: revbench -> official names.
REVCOL_AUX = [
    (r"^aux_heads\.(\d)\.norm\.", r"cls_blocks.\1.classifier.0."),
    (r"^aux_heads\.(\d)\.fc\.", r"cls_blocks.\1.classifier.1."),
    (r"^decoders\.(\d)\.stages\.(\d)\.4\.", r"decoder_blocks.\1.normal_layers.\2.0."),
    (r"^decoders\.(\d)\.stages\.(\d)\.", r"decoder_blocks.\1.proj_layers.\2."),
    (r"^decoders\.(\d)\.proj\.", r"decoder_blocks.\1.projback.0."),
]


def official_revcol_state(model: nn.Module, heads: str) -> dict[str, Tensor]:
    """megvii-research/RevCol's FullNet names. `heads`: "plain" (cls.classifier, as the
    fine-tuned files) or "supervised" (cls_blocks.0-3 and decoder_blocks.0-2, as the
    ImageNet-1k files trained with intermediate supervision)."""
    final = "cls." if heads == "plain" else "cls_blocks.3."
    head = [(r"^head\.norm\.", final + "classifier.0."), (r"^head\.fc\.", final + "classifier.1.")]
    per_stack = len(model.columns[0]) if heads == "supervised" else 1
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"columns\.(\d+)\.(?:(\d+)\.)?(.*)$", key)
        if m:
            column = int(m[1]) if m[2] is None else int(m[1]) * per_stack + int(m[2])
            key = f"subnet{column}." + renamed({m[3]: value}, REVCOL_COLUMN).popitem()[0]
        elif not key.startswith("stem."):
            key = renamed({key: value}, head + REVCOL_AUX).popitem()[0]
        out[key] = value
    return out


def test_revcol_official_layout_loads(tmp_path: Path) -> None:
    source = randomized("revcol_tiny", **REVCOL)
    state = official_revcol_state(source, "plain")
    assert "subnet3.level0.fusion.up.channel_reschedule.1.bias" in state
    path = save({"model": state, "epoch": 29}, tmp_path / "revcol_tiny_ft.pth")
    assert_same_outputs(create("revcol_tiny", **REVCOL, pretrained=path), source, 64)


def test_revcol_intermediate_supervision_file_loads_into_either_model(tmp_path: Path) -> None:
    # 8 columns: revbench keeps them as 4 stacks of 2 (columns.J.K), officially subnet0-7.
    kw = dict(REVCOL, num_columns=8)
    source = randomized("revcol_tiny", **kw, intermediate_supervision=True)
    state = official_revcol_state(source, "supervised")
    assert "decoder_blocks.2.normal_layers.2.0.pwconv1.weight" in state
    assert "subnet7.level2.fusion.up.channel_reschedule.0.weight" in state
    path = save({"model": state}, tmp_path / "revcol_tiny_1k.pth")
    # With the auxiliary heads: every tensor lands (the heads' outputs included).
    loaded = create("revcol_tiny", **kw, intermediate_supervision=True, pretrained=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # The plain classifier takes the columns and the final head, and drops the rest.
    assert_same_outputs(create("revcol_tiny", **kw, pretrained=path), source, 64)
