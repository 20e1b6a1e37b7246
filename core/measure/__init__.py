"""Measuring whether search got better: metrics (pure), offline evaluation, online CTR,
projections and maps of the embedding space, the simulated user, and benchmarks."""
