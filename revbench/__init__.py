"""revbench: memory-profiling benchmark suite for reversible vision networks."""

__version__ = "0.1.0"
