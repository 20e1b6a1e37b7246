"""Words and fixed choices the pages show: what each metric rewards and misses (the seed's
notes), option labels, accepted upload types, captions."""

from core.gallery.images import IMAGE_EXTENSIONS

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

# The Search page's query sources: widget values are the keys, people read the labels. Other
# pages preset the source by key (`ui.state.preset_gallery_pick`), never by display text.
QUERY_SOURCE_LABELS = {"upload": "Upload an image", "gallery": "Pick from the gallery"}
ALL_LABELS = "(all)"  # the label filter's "no filter" choice
GALLERY_PAGE_SIZE = 40  # images per Gallery page (read from the catalog a page at a time)
GALLERY_COLUMNS = 8  # thumbnails per row

# What the upload boxes accept: every image format ingest reads, and zips where whole galleries go.
UPLOAD_IMAGE_TYPES = sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)
UPLOAD_GALLERY_TYPES = [*UPLOAD_IMAGE_TYPES, "zip"]

MODE_HELP = {  # the Train page's modes, with what each costs on the demo gallery
    "head": "an adapter on the frozen encoder's features and stage taps: about half a minute",
    "partial": "the encoder's last stage and the adapter: about a minute on the demo gallery",
    "full": "the whole image tower: minutes, and the most prone to overfit small feedback",
}

MAP_CAPTION = (
    "Star: your last search, placed at the similarity-weighted mean of its nearest images; "
    "lines to the results it showed. Green / red: pairs labelled similar / not similar. "
    "Click a point to see it and search with it; drag a box to see the images inside it, "
    "counted per label (double-click clears it)."
)
COHESION_CAPTION = (
    "Mean cosine within a label against mean cosine to the other labels' images; a larger gap "
    "is a tighter, better separated category. Click a column to sort."
)

LAB_CAPTION = (
    "The seed's nearest-neighbour chapter, measured: exact search scans every vector (O(N·D) "
    "per query); a K-D tree, LSH, IVF and HNSW each skip most of them and miss some true "
    "neighbours. Each method is swept over its main parameter on the chosen version's vectors, "
    "with gallery images held out as queries; recall@k is against exact search. The lab runs "
    "in a process of its own at low priority and never changes the index search uses."
)
