"""Measuring whether search got better: metrics (pure), offline evaluation, online CTR,
projections and maps of the embedding space, the background jobs that compute maps and
evaluations for the pages, the simulated user, and benchmarks."""
