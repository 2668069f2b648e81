"""The benchmark: sections (loader, training step, inference), their measurements, variants
side by side, and the tables (``python -m faceparse.bench``)."""

from faceparse.bench.measure import PeakMemory, machine
from faceparse.bench.sections import count_flops
from faceparse.bench.variants import run, run_variants

__all__ = ["PeakMemory", "count_flops", "machine", "run", "run_variants"]
