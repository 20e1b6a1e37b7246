"""Words for the dashboards: what each metric rewards and what it misses (the seed's notes)."""

METRIC_NOTES = {
    "mrr": "**MRR** rewards putting *a* relevant image first (1 / rank of the first hit); it "
    "ignores every relevant image after the first.",
    "map": "**mAP** rewards ranking *all* relevant images early (precision at each hit, over "
    "all |R| relevant items); binary relevance only, and every rank weighs the same.",
    "precision_at_k": "**Precision@k** rewards a top k full of relevant images; blind to their "
    "order within the k.",
    "recall_at_k": "**Recall@k** rewards finding a large share of all relevant images in the "
    "top k; blind to order, and small when a category is large.",
    "ndcg_at_k": "**nDCG@k** rewards relevant images near the top, with graded gains and a log "
    "discount; needs graded (or binary) judgements for every item it scores.",
    "ctr": "**CTR** (clicked impressions / impressions) rewards results people open; clicks are "
    "noisy (a click is not always a match) and fall with position, whatever the quality.",
    "similar_share": "**Labelled similar** is the share of shown results people marked similar: "
    "explicit, but sparse and only from those who label.",
}
