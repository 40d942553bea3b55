"""The registered models' configurations, one module per family, without torch.

Each module holds its family's config dataclass (fields, derived properties such as the
side multiple, and the field checks), the table of published sizes, and the family's
registration, naming its network ("revbench.models.revvit:RevViT") to be imported when a
model is first built. The network itself is the family's own module, models/<family>.py,
which reads its config from here. So the registry, a suite's expansion and the estimate
cache's keys need no torch: a run answered wholly from the estimate cache never imports it.
"""
