"""Detection and segmentation: tasks, detectors, counts and the dense estimator.

Every registered detector builds on the meta device with a parameter count checked against
figures the detector code does not produce (torchvision's documented counts for its
ResNet-50 detectors; the trunk's own count plus the HRNetV2p neck's formula otherwise);
one detector per backbone kind and head trains one step at a tiny size; the estimator is
checked against the CPU allocator's own record of a real step, read here from the profiler's
flat event list without the estimator's code.
"""

from __future__ import annotations

import bisect
import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._pytree import tree_flatten

from revbench.counting import count_macs, count_params
from revbench.models import create, get_info, list_models
from revbench.scenario import build_step
from revbench.tasks import BOXES_PER_IMAGE, dense_image_shape, get_task, synthetic_targets

pytestmark = pytest.mark.usefixtures("one_thread")

DETECTORS = [i.name for i in list_models() if i.task in ("detect", "segment")]
# Small sample sizes keep the RoI heads cheap in tests; the registered ones are 2000 / 512.
CHEAP = dict(rpn_post_nms_top_n_train=64, box_batch_size_per_image=32, num_classes=5)


def test_image_shape_follows_mmdetection():
    assert dense_image_shape(800) == (800, 1333)
    assert dense_image_shape(64) == (64, 107)


def test_synthetic_targets_are_fixed_and_inside_the_image():
    a = synthetic_targets(2, 64, 107, num_classes=5, masks=True)
    b = synthetic_targets(2, 64, 107, num_classes=5, masks=True)
    for ta, tb in zip(a, b):
        for key in ("boxes", "labels", "masks"):
            assert torch.equal(ta[key], tb[key])
    for t in a:
        boxes = t["boxes"]
        assert boxes.shape == (BOXES_PER_IMAGE, 4)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 107).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 64).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert ((t["labels"] >= 1) & (t["labels"] < 5)).all()
        assert t["masks"].shape == (BOXES_PER_IMAGE, 64, 107)
        for box, mask in zip(boxes.long(), t["masks"]):
            ys, xs = mask.nonzero(as_tuple=True)
            assert len(ys) > 0
            assert xs.min() >= box[0] and xs.max() < box[2]
            assert ys.min() >= box[1] and ys.max() < box[3]


def test_registered_detectors():
    heads = {get_info(n).task for n in DETECTORS}
    assert heads == {"detect", "segment"}
    assert len(DETECTORS) == 2 * (7 + 3 + 2)  # RevBiFPN S0-S6, HRNetV2p x3, ResNet-FPN x2
    assert get_info("faster_rcnn_revbifpn_s3").modes == ("reversible", "vanilla", "checkpoint")
    assert get_info("faster_rcnn_hrnetv2p_w18").kind == "baseline"


@pytest.mark.parametrize(
    "name, params",
    # torchvision's documented counts of fasterrcnn_resnet50_fpn / maskrcnn_resnet50_fpn
    [("faster_rcnn_r50_fpn", 41_755_286), ("mask_rcnn_r50_fpn", 44_401_393)],
)
def test_resnet50_detectors_have_torchvisions_counts(name, params):
    with torch.device("meta"):
        assert count_params(create(name)) == params


def _neck_params(in_channels: list[int]) -> int:
    # HRNetV2p neck: 1x1 conv sum(C) -> 256 with bias, five 3x3 convs 256 -> 256 with bias.
    return sum(in_channels) * 256 + 256 + 5 * (256 * 256 * 9 + 256)


@pytest.mark.parametrize("name", [n for n in DETECTORS if "_fpn" not in n])
def test_pyramid_detector_is_trunk_plus_neck_plus_heads(name):
    # The RPN and RoI heads are ResNet-50-FPN's, whose trunk+FPN torchvision counts itself.
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    info = get_info(name)
    head = "mask_rcnn_r50_fpn" if info.task == "segment" else "faster_rcnn_r50_fpn"
    with torch.device("meta"):
        heads = count_params(create(head)) - count_params(
            resnet_fpn_backbone(backbone_name="resnet50", weights=None)
        )
        model = create(name)
    trunk = model.detector.backbone.body
    channels = (
        [f["num_chs"] for f in trunk.feature_info]
        if isinstance(trunk.feature_info, list)
        else trunk.feature_info.channels()
    )
    assert count_params(model) == count_params(trunk) + _neck_params(channels) + heads


@pytest.mark.parametrize(
    "name, published_gmacs",
    # Chiley et al., MLSys 2023, detection table (MMDetection's get_flops at 1333x800)
    [("faster_rcnn_revbifpn_s3", 181.0), ("faster_rcnn_hrnetv2p_w18", 196.2)],
)
def test_detector_macs_near_the_published(name, published_gmacs):
    with torch.device("meta"):
        model = create(name)
    assert count_macs(model, 800) / 1e9 == pytest.approx(published_gmacs, rel=0.02)


def _train_step(name: str, **overrides) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(0)
    model = create(name, img_size=64, **{**CHEAP, **overrides})
    step = build_step(
        model,
        task=model.cfg.task,
        scenario="train",
        precision="fp32",
        batch_size=2,
        resolution=64,
        device="cpu",
    )
    step.forward()
    loss = float(step._loss.detach())
    step.backward()
    return model, loss


@pytest.mark.parametrize(
    "name",
    [
        "faster_rcnn_revbifpn_s0",
        "mask_rcnn_hrnetv2p_w18",
        "faster_rcnn_r50_fpn",
        "mask_rcnn_revbifpn_s0",
    ],
)
def test_detector_trains_one_step(name):
    model, loss = _train_step(name)
    assert math.isfinite(loss) and loss > 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)


def test_revbifpn_detector_reversible_gradients_equal_vanilla():
    grads = {}
    for mode in ("vanilla", "reversible"):
        model, _ = _train_step("faster_rcnn_revbifpn_s0", mode=mode)
        grads[mode] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads["vanilla"].keys() == grads["reversible"].keys()
    for n, g in grads["vanilla"].items():
        torch.testing.assert_close(grads["reversible"][n], g, rtol=1e-3, atol=1e-4, msg=n)


def test_detector_infers_and_counts_like_the_task_says():
    model = create("faster_rcnn_r50_fpn", img_size=64, num_classes=5)
    (images, targets), _ = get_task("detect").make_batch(model, 2, 64, torch.device("cpu"))
    assert images.shape == (2, 3, 64, 107)
    with torch.no_grad():
        detections = model.eval()((images, targets))
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "labels", "scores"}


# --------------------------------------------------------------------------- estimator


def _estimate(name: str, batch_size: int = 2, resolution: int = 128, card: str = "cpu"):
    # The CPU kernels' step by default: what the CPU allocator's record is compared with.
    from revbench.methods.estimate_dense import estimate_dense_memory

    info = get_info(name)
    return estimate_dense_memory(
        lambda: create(name, img_size=resolution, **CHEAP),
        task=info.task,
        batch_size=batch_size,
        resolution=resolution,
        warmup_resolution=64,
        card=card,
    )


def _is_operator(name: str) -> bool:
    return "::" in name and not name.startswith(("autograd::", "revbench::"))


def _allocator_record(
    name: str, batch_size: int = 2, resolution: int = 128
) -> tuple[int, int, int]:
    """The same step run for real and read off the CPU allocator's own record
    (torch.profiler's flat event list; no estimator code), sizes rounded as CUDA rounds:
    (resident bytes, the record's peak above them, its peak sampled only between
    operators, where no kernel's workspace is live)."""

    def rounded(n: int) -> int:
        return math.ceil(n / 512) * 512

    info = get_info(name)
    torch.manual_seed(0)
    model = create(name, img_size=resolution, **CHEAP)
    common = dict(task=info.task, scenario="train", precision="fp32", device="cpu")
    step = build_step(model, batch_size=batch_size, resolution=resolution, **common)
    warmup = build_step(model, batch_size=1, resolution=64, **common)
    warmup.run()
    step.optimizer = warmup.optimizer
    del warmup
    torch.manual_seed(0)
    alive = [*model.parameters(), *model.buffers(), *tree_flatten(step.inputs)[0]]
    alive += [s for st in step.optimizer.state.values() for s in st.values()]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in alive}
    resident = sum(rounded(n) for n in storages.values())
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step.run()
    events = list(prof.profiler.kineto_results.events())
    # Outermost operators: an operator starting inside another one is part of its kernel.
    tops, end = [], -1
    for e in sorted((e for e in events if _is_operator(e.name())), key=lambda e: e.start_ns()):
        if e.start_ns() >= end:
            tops.append((e.start_ns(), e.end_ns()))
            end = e.end_ns()
    starts = [s for s, _ in tops]

    def inside_operator(t: int) -> bool:
        i = bisect.bisect_right(starts, t) - 1
        return i >= 0 and t < tops[i][1]

    memory = [(e.start_ns(), 0, e.nbytes()) for e in events if e.name() == "[memory]"]
    points = sorted(memory + [(end, 1, 0) for _, end in tops])
    current = peak = between = 0
    for t, is_end, n in points:
        current += rounded(n) if n > 0 else -rounded(-n)
        peak = max(peak, current)
        if is_end or not inside_operator(t):
            between = max(between, current)
    return resident, peak, between


@pytest.mark.parametrize("name", ["faster_rcnn_revbifpn_s0", "mask_rcnn_revbifpn_s0"])
def test_dense_estimate_matches_the_cpu_allocator_of_a_real_step(name):
    estimate = _estimate(name).peak_bytes
    resident, peak, between = _allocator_record(name)
    # The estimate is the allocator's record less the kernels' workspaces: against the
    # record between operators it agrees, the whole step and the step's own part alike.
    assert estimate == pytest.approx(resident + between, rel=0.01)
    assert estimate - resident == pytest.approx(between, rel=0.01)
    # Inside operators the CPU kernels add workspace (oneDNN's convolution backward), which
    # the estimate leaves out: never more than the whole record.
    assert estimate <= resident + peak


def test_dense_estimate_on_a_card_adds_the_box_heads_cublas_workspaces():
    # The box head's linear layers multiply on cuBLAS(Lt) in the forward and on cuBLAS in
    # the backward (autograd's device thread): two kept workspaces, the rest unchanged.
    cpu = _estimate("faster_rcnn_revbifpn_s0")
    card = _estimate("faster_rcnn_revbifpn_s0", card="a100")
    assert card.by_category["library_workspace"] == 2 * 8_519_680
    assert card.peak_bytes == cpu.peak_bytes + 2 * 8_519_680


def test_dense_estimate_is_deterministic_and_independent_of_threads():
    a = _estimate("mask_rcnn_revbifpn_s0")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the kernels' workspaces change; the estimate must not
    try:
        b = _estimate("mask_rcnn_revbifpn_s0")
    finally:
        torch.set_num_threads(threads)
    assert a == b
    assert a.by_category["activations"] > 0 and a.by_category["other"] > 0
    assert a.by_category["gradients"] > 0
    assert a.peak_bytes == sum(a.by_category.values())


def _sizes_from(name: str, **overrides) -> tuple[list[int], list[int]]:
    """Proposals the RPN keeps and positive candidates the RoI sampler is offered, per
    image, in one training step."""
    torch.manual_seed(0)
    model = create(name, img_size=128, **{**CHEAP, **overrides}).train()
    inputs, _ = get_task(get_info(name).task).make_batch(model, 2, 128, "cpu")
    rpn, heads = model.detector.rpn, model.detector.roi_heads
    proposals, positives = [], []
    keep, sample = rpn.filter_proposals, heads.subsample

    def kept(*args, **kwargs):
        boxes, scores = keep(*args, **kwargs)
        proposals.extend(len(b) for b in boxes)
        return boxes, scores

    def sampled(labels):
        positives.extend(int((x > 0).sum()) for x in labels)
        return sample(labels)

    rpn.filter_proposals, heads.subsample = kept, sampled
    model(inputs)
    return proposals, positives


def test_data_sizes_at_their_maxima_unless_drawn():
    # 256 RoIs sampled per image, a quarter positive at most: a cap of 64. The random
    # ResNet-50-FPN's proposals overlap the 7 targets little ("drawn" offers about the
    # targets themselves, which torchvision appends), and NMS suppresses some of them: "max"
    # keeps every proposal NMS would have dropped (up to the 2000, here fewer exist at 128
    # px) and fills the positives up to the cap.
    wide = dict(box_batch_size_per_image=256, rpn_post_nms_top_n_train=2000)
    proposals, positives = _sizes_from("mask_rcnn_r50_fpn", data_sizes="drawn", **wide)
    assert all(0 < n < 64 for n in positives) and all(n < 2000 for n in proposals)
    most, capped = _sizes_from("mask_rcnn_r50_fpn", **wide)
    assert capped == [64, 64]
    assert all(m > n for m, n in zip(most, proposals))
    # Where the RPN has more than the maximum, the maximum is kept.
    assert _sizes_from("mask_rcnn_r50_fpn", rpn_post_nms_top_n_train=1100)[0] == [1100, 1098]
    # More positive candidates than the cap (2) are left as drawn: the sampler picks.
    few = dict(box_batch_size_per_image=8)
    assert (
        _sizes_from("mask_rcnn_r50_fpn", **few)[1]
        == _sizes_from("mask_rcnn_r50_fpn", data_sizes="drawn", **few)[1]
    )
    with pytest.raises(ValueError, match="data_sizes 'all' is invalid; valid: max, drawn"):
        create("mask_rcnn_r50_fpn", data_sizes="all")


def test_inference_keeps_torchvisions_nms():
    torch.manual_seed(0)
    model = create("faster_rcnn_revbifpn_s0", img_size=128, **CHEAP).eval()
    assert model.detector.rpn.nms_thresh == 0.7
    seen = []
    keep = model.detector.rpn.filter_proposals
    model.detector.rpn.filter_proposals = lambda *a, **k: (
        seen.append(model.detector.rpn.nms_thresh) or keep(*a, **k)
    )
    with torch.no_grad():
        model(get_task("detect").make_batch(model, 1, 128, "cpu")[0])
    assert seen == [0.7]


def test_mask_head_at_the_cap_holds_more_than_as_drawn():
    wide = dict(box_batch_size_per_image=128)
    at_cap = _estimate_with("mask_rcnn_revbifpn_s0", **wide)
    drawn = _estimate_with("mask_rcnn_revbifpn_s0", data_sizes="drawn", **wide)
    assert at_cap.peak_bytes > drawn.peak_bytes
    assert at_cap.by_category["parameters"] == drawn.by_category["parameters"]


def _estimate_with(name: str, **overrides):
    from revbench.methods.estimate_dense import estimate_dense_memory

    info = get_info(name)
    return estimate_dense_memory(
        lambda: create(name, img_size=128, **{**CHEAP, **overrides}),
        task=info.task,
        batch_size=2,
        resolution=128,
        warmup_resolution=64,
        card="cpu",
    )


def test_detector_resized_takes_small_images_at_their_own_size():
    # The estimator's warm-up relies on it: otherwise the transform scales a small batch
    # back up to the configured 800x1333 and the warm-up costs a full-size step.
    model = create("faster_rcnn_r50_fpn", num_classes=5).eval()
    image = [torch.rand(3, 64, 107)]

    def size():
        return model.detector.transform(image)[0].image_sizes[0]

    assert size() == (797, 1333)  # scaled up, aspect kept (1333 / 107 x 64 = 797)
    with model.resized_to(64):
        assert size() == (64, 107)
    assert size() == (797, 1333)


# ------------------------------------------------------------------------- EfficientDet

EFFICIENTDET_PARAMS = [
    3_880_067,
    6_625_898,
    8_097_039,
    12_032_296,
    20_723_675,
    33_653_315,
    51_871_782,
    51_871_782,
]  # effdet's own counts of D0-D7


@pytest.mark.parametrize("d", range(8))
def test_efficientdet_counts_and_native_size(d):
    from revbench.models.published import read_published

    name = f"tf_efficientdet_d{d}"
    published = {
        f.metric: f for f in read_published() if f.model == name and f.task == "efficientdet"
    }
    info = get_info(name)
    assert info.native_resolution == published["params"].resolution
    # the registry serves them to the report's counts table, as it does ImageNet's
    assert info.published_params == round(published["params"].value_base)
    assert info.published_macs == round(published["macs"].value_base)
    with torch.device("meta"):
        model = create(name)
    params = count_params(model)
    assert params == EFFICIENTDET_PARAMS[d]
    assert abs(params - published["params"].value_base) <= published["params"].rounding
    assert count_macs(model, info.native_resolution) == pytest.approx(
        published["macs"].value_base, rel=0.02
    )


def test_efficientdet_trains_one_step_on_its_own_losses():
    torch.manual_seed(0)
    model = create("tf_efficientdet_d0", img_size=128, num_classes=5)
    step = build_step(
        model,
        task="detect_square",
        scenario="train",
        precision="fp32",
        batch_size=2,
        resolution=128,
        device="cpu",
    )
    assert step.inputs[0].shape == (2, 3, 128, 128)
    step.forward()
    assert math.isfinite(float(step._loss.detach())) and float(step._loss.detach()) > 0
    step.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_efficientdet_labels_anchors_outside_the_step_as_effdet_does_inside():
    # encode_targets is effdet's loader-side labelling: the same loss as its in-step labeler.
    from effdet.bench import DetBenchTrain

    torch.manual_seed(0)
    model = create("tf_efficientdet_d0", img_size=128, num_classes=5)
    step = build_step(
        model, task="detect_square", scenario="train", precision="fp32", batch_size=2,
        resolution=128, device="cpu",
    )  # fmt: skip
    images, target = step.inputs
    assert target["label_cls_0"].shape == (2, 16, 16, 9)  # P3 of 128 px, 9 anchors
    assert target["label_bbox_4"].shape == (2, 1, 1, 36)  # P7
    assert (target["label_num_positives"] > 0).all()
    boxes = synthetic_targets(2, 128, 128, 5, masks=False)
    inside = DetBenchTrain(model.bench.model, create_labeler=True)
    torch.manual_seed(1)  # the same stochastic-depth draws in both steps
    expected = inside(
        images,
        {
            "bbox": torch.stack([t["boxes"][:, [1, 0, 3, 2]] for t in boxes]),
            "cls": torch.stack([t["labels"] for t in boxes]).float(),
        },
    )["loss"]
    torch.manual_seed(1)
    assert torch.equal(model(step.inputs)["loss"], expected)


def test_efficientdet_estimate_on_fake_tensors_equals_a_real_step():
    # Its step is shaped by the image size alone, so the fake-tensor estimator serves it; the
    # real step read off the CPU allocator (the dense estimator) must agree within 1%.
    from revbench.methods.estimate import estimate_memory
    from revbench.methods.estimate_dense import estimate_dense_memory
    from revbench.methods.estimate_method import on_real_tensors
    from revbench.suite import make_cell

    def cell(scenario):
        return make_cell(
            "tf_efficientdet_d0", method="estimate", scenario=scenario, resolution=512,
            batch_size=2,
        )  # fmt: skip

    # training on fake tensors; inference decodes boxes with NMS: a real step
    assert not on_real_tensors(cell("train")) and on_real_tensors(cell("infer"))
    detector = make_cell("faster_rcnn_r50_fpn", method="estimate", resolution=800, batch_size=2)
    assert on_real_tensors(detector)

    def factory():
        return create("tf_efficientdet_d0", img_size=256, num_classes=5)

    fake = estimate_memory(factory, task="detect_square", batch_size=2, resolution=256)
    real = estimate_dense_memory(
        factory, task="detect_square", batch_size=2, resolution=256, warmup_resolution=256
    )
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.01)
    assert fake.by_category["optimizer_state"] == fake.by_category["parameters"] > 0
    assert fake.by_category["activations"] > 0


def test_published_detector_points_use_revbench_names():
    from revbench.published import detector_points, load_published

    points = detector_points(load_published()).set_index("model")
    assert set(points.index) <= set(DETECTORS)
    w18 = points.loc["faster_rcnn_hrnetv2p_w18"]
    assert (w18["bytes_per_sample"], w18["macs"], w18["task"]) == (3.13e9, 196.2e9, "detect")
    assert points.loc["mask_rcnn_revbifpn_s6", "bytes_per_sample"] == 3.71e9
    assert points.loc["faster_rcnn_revbifpn_s3", "mode"] == "reversible"


# ------------------------------------------------------------------------------- BiFPN


def test_bifpn_fusion_weights_start_at_one_and_normalise():
    from revbench.models.bifpn import EPS, FusionNode

    node = FusionNode(4, 3)
    assert torch.equal(node.weight.detach(), torch.ones(3))
    node.conv = torch.nn.Identity()
    x = [torch.full((1, 4, 2, 2), v) for v in (1.0, 2.0, 6.0)]
    # (1 + 2 + 6) / (3 + eps)
    torch.testing.assert_close(node(x), torch.full((1, 4, 2, 2), 9.0 / (3 + EPS)))


def test_bifpn_keeps_five_levels_and_trains():
    torch.manual_seed(0)
    model = create("bifpn", img_size=128, width=8, num_layers=2, num_classes=5)
    feats = []
    x = torch.randn(2, 3, 128, 128)
    for stage in model.stem:
        x = stage(x)
        feats.append(x)
    levels = model.neck(feats[-3:])
    assert [tuple(p.shape) for p in levels] == [
        (2, 8, 128 // 2**k, 128 // 2**k) for k in range(3, 8)
    ]
    model(torch.randn(2, 3, 128, 128)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bifpn_memory_per_image_grows_with_every_layer():
    # BiFPN's side of the neck-scaling figure. RevSilo's side, a reversible stack whose
    # stored activations do not grow with its depth, is tests/test_model_contract.py's
    # test_activation_memory_flat_in_depth[revbifpn_s0] (num_ext_layers 0 vs 1).
    from revbench.methods.estimate import estimate_memory

    def per_sample(model, resolution, **overrides):
        a, b = (
            estimate_memory(model, batch_size=n, resolution=resolution, **overrides).peak_bytes
            for n in (2, 4)
        )
        return (b - a) / 2

    # Each layer stores its activations: more per image with every layer (not exactly a
    # layer's worth each, as the peak's moment shifts between stem and neck at this size).
    bifpn = [per_sample("bifpn", 128, width=16, num_layers=n) for n in (1, 3)]
    assert bifpn[0] < bifpn[1]
