"""The figures of `revbench plot`: each reads stored results only and returns a Figure.

Every figure function takes the `ok` rows of one suite and one facet (scenario, precision,
method) and raises `NoData` with a one-line reason when there is nothing to draw; the
caller notes the reason in the report instead of failing. Figures use the Agg canvas
explicitly (no pyplot state), so rendering works headless and leaves the process's
matplotlib backend alone.

`style` holds what they share (palettes, legends, `finish`); `macs` the memory-vs-MACs
figures, `memory` the memory figures over a suite's other axes, `max_batch` the max-batch
bars.
"""
