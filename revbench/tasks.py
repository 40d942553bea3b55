"""Tasks: what a step feeds a model, what it compares the outputs with, and its loss.

A registered model serves one task (`revbench.models.ModelInfo`); suite expansion checks
that every cell's task is one revbench can run and is the model's, before anything runs.
Detection and segmentation register here beside classification.

Dense tasks (`detect`, `segment`) follow MMDetection's conventions, the detection papers'
harness: images of 1333x800 (width x height). A cell has one resolution, so for them it is
the short side (the image height) and the width follows the 1333:800 aspect
(`dense_image_shape`, beside the detectors' names in models/detection_names.py:
800 -> 800x1333, 64 -> 64x107). The targets are synthetic COCO-like annotations drawn
from a fixed seed, the same on every machine: `BOXES_PER_IMAGE` boxes per image with
labels (and instance masks for `segment`). Memory per sample is per image.
`detect_square` is `detect` on R x R images, EfficientDet's convention.

What a task is (its name, scenarios, image shape) is read without torch: a suite checks
its task names and a record states its geometry in a process that may never load torch.
torch is imported in the functions that make tensors, when a step is built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from revbench.models.detection_names import dense_image_shape
from revbench.models.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn


class Task(ABC):
    """Inputs, targets and loss of one kind of model output."""

    name: str
    # Scenarios whose step sizes every tensor from the batch's shape alone (no operator whose
    # output size depends on values, such as NMS): fake tensors can estimate those.
    shape_only_scenarios: tuple[str, ...] = ("train", "infer")

    @abstractmethod
    def make_batch(
        self, model: nn.Module, batch_size: int, resolution: int, device: torch.device
    ) -> tuple[Any, Any]:
        """(inputs, targets) of one batch on `device`; `inputs` is what the model is called on."""

    @abstractmethod
    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """A scalar loss of the model's outputs."""


class Classify(Task):
    """Images to logits, cross-entropy against uniformly drawn labels."""

    name = "classify"

    def make_batch(self, model, batch_size, resolution, device):
        import torch

        num_classes = getattr(model, "num_classes", None)
        if not num_classes:
            raise ValueError(
                f"{type(model).__name__} has no num_classes; the classify task draws its "
                "targets from it"
            )
        images = torch.randn(batch_size, 3, resolution, resolution, device=device)  # (B, 3, R, R)
        targets = torch.randint(0, num_classes, (batch_size,), device=device)  # (B,)
        return images, targets

    def loss(self, outputs, targets):
        import torch.nn.functional as F

        # The loss in fp32, as mixed-precision recipes do.
        return F.cross_entropy(outputs.float(), targets)  # outputs: (B, num_classes)


BOXES_PER_IMAGE = 7  # COCO train2017 averages 7.3 annotated instances per image
TARGET_SEED = 0


def synthetic_targets(
    batch_size: int, height: int, width: int, num_classes: int, masks: bool
) -> list[dict[str, torch.Tensor]]:
    """COCO-like targets for a batch, from `TARGET_SEED` on the CPU (same on every machine).

    Per image: `BOXES_PER_IMAGE` boxes (x1, y1, x2, y2) whose sides are 1/8 to 1/2 of the
    image's, labels in 1..num_classes-1 (0 is background), and for masks an ellipse
    inscribed in each box, as uint8 (N, H, W).
    """
    import torch

    g = torch.Generator().manual_seed(TARGET_SEED)
    n = BOXES_PER_IMAGE
    out = []
    for _ in range(batch_size):
        size = torch.rand(n, 2, generator=g) * 0.375 + 0.125  # (N, 2) w, h as image fractions
        corner = torch.rand(n, 2, generator=g) * (1 - size)  # (N, 2) top-left, inside
        scale = torch.tensor([width, height], dtype=torch.float32)
        boxes = torch.cat([corner * scale, (corner + size) * scale], dim=1).floor()  # (N, 4)
        target = {
            "boxes": boxes,
            "labels": torch.randint(1, num_classes, (n,), generator=g),
        }
        if masks:
            ys = torch.arange(height, dtype=torch.float32).view(1, -1, 1) + 0.5
            xs = torch.arange(width, dtype=torch.float32).view(1, 1, -1) + 0.5
            cx, cy = (
                ((boxes[:, 0] + boxes[:, 2]) / 2).view(-1, 1, 1),
                ((boxes[:, 1] + boxes[:, 3]) / 2).view(-1, 1, 1),
            )
            rx, ry = (
                ((boxes[:, 2] - boxes[:, 0]) / 2).view(-1, 1, 1),
                ((boxes[:, 3] - boxes[:, 1]) / 2).view(-1, 1, 1),
            )
            inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1  # (N, H, W)
            target["masks"] = inside.to(torch.uint8)
        out.append(target)
    return out


class Detect(Task):
    """Images and box targets to the detector's own training losses, summed.

    The model is called on `(images, targets)`: images (B, 3, H, W) at `image_shape`,
    targets one dict per image (torchvision's detection format). In training it returns a
    dict of losses (torchvision's and effdet's detectors both do); the loss is their sum.
    `square`: images R x R (EfficientDet's native sizes) instead of MMDetection's 1333:800.
    """

    masks = False

    def __init__(
        self, name: str = "detect", square: bool = False, shape_only_scenarios: tuple = ()
    ):
        self.name = name
        self.square = square
        self.shape_only_scenarios = shape_only_scenarios

    def image_shape(self, resolution: int) -> tuple[int, int]:
        return (resolution, resolution) if self.square else dense_image_shape(resolution)

    def make_batch(self, model, batch_size, resolution, device):
        import torch
        from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
        from torch.utils._pytree import tree_map

        num_classes = getattr(model, "num_classes", None)
        if not num_classes or num_classes < 2:
            raise ValueError(
                f"{type(model).__name__} has no num_classes of 2 or more; the {self.name} "
                "task draws its target labels from it"
            )
        height, width = self.image_shape(resolution)
        g = torch.Generator().manual_seed(TARGET_SEED)
        images = torch.rand(batch_size, 3, height, width, generator=g)  # (B, 3, H, W) in [0, 1)
        # Targets carry values (boxes, labels, a model's own encoding of them, such as
        # EfficientDet's anchor labels): real tensors even under the estimator's fake mode,
        # then handed to the step as that mode's tensors, as a loader hands them to a GPU.
        with unset_fake_temporarily():
            targets = synthetic_targets(batch_size, height, width, num_classes, self.masks)
            encode = getattr(model, "encode_targets", None)
            if encode is not None:
                targets = encode(targets)
        fake_mode = images.fake_mode if isinstance(images, FakeTensor) else None
        images = images.to(device)
        targets = tree_map(
            lambda t: fake_mode.from_tensor(t) if fake_mode else t.to(device), targets
        )
        return (images, targets), None

    def loss(self, outputs, targets):
        return sum(outputs.values())


class Segment(Detect):
    """Detection plus instance masks (Mask R-CNN): targets carry (N, H, W) masks."""

    masks = True

    def __init__(self):
        super().__init__("segment")


def task_geometry(task: str, resolution: int) -> dict[str, int | None]:
    """What a record states about a cell's inputs: image height, width, boxes per image."""
    the_task = _TASKS.get(task, None)
    if isinstance(the_task, Detect):
        height, width = the_task.image_shape(resolution)
        return {"image_height": height, "image_width": width, "boxes_per_image": BOXES_PER_IMAGE}
    return {"image_height": resolution, "image_width": resolution, "boxes_per_image": None}


_TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    return _TASKS.register(task.name, task)


get_task = _TASKS.get
task_names = _TASKS.names


register_task(Classify())
# torchvision's detectors keep what NMS and the samplers select, in training and inference.
register_task(Detect())
register_task(Segment())
# EfficientDet trains on anchors labelled before the step (models/efficientdet.py); only its
# inference decodes boxes with NMS.
register_task(Detect("detect_square", square=True, shape_only_scenarios=("train",)))
