"""The product's named choices, in one torch-free module: the command line builds its
`choices=` from here without importing the encoder, and each part of core validates against
the same tuples (their owners import them from here rather than retyping them)."""

SPLITS: tuple[str, ...] = ("train", "test")  # every image's split, fixed by its id
EVAL_SPLITS: tuple[str, ...] = ("all", *SPLITS)  # what `evaluate` ranks within
RELEVANCE_SOURCES: tuple[str, ...] = ("labels", "feedback")  # same label / logged judgements
# whose queries `evaluate` counts: every labelled image, or those of the categories a version's
# training feedback covered (its card's `seen_labels`) / did not cover
LABEL_SETS: tuple[str, ...] = ("all", "seen", "unseen")
AP_VARIANTS: tuple[str, ...] = ("relevant", "retrieved")  # AP@k divided by |R| / by hits in k
METRIC_NAMES: tuple[str, ...] = ("mrr", "map", "precision_at_k", "recall_at_k", "ndcg_at_k")
TRAIN_MODES: tuple[str, ...] = ("head", "partial", "full")  # what a fine-tune trains
PROJECTION_METHODS: tuple[str, ...] = ("umap", "pca")  # 2-D maps of an embedding space
EXPORT_FORMATS: tuple[str, ...] = ("csv", "parquet")  # the interaction log's exports
INTERACTION_TYPES: tuple[str, ...] = ("impression", "click", "similar", "not_similar", "grade")
QUERY_SOURCES: tuple[str, ...] = ("upload", "gallery", "refine", "simulate")
DEMO_SETS: tuple[str, ...] = ("tuxpaint", "fashion-mnist")  # `demo-data --set`; first: default
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")  # what the image tower computes in
