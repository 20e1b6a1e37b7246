"""The encoder: images to unit vectors. The registry of open_clip models, the `Encoder`, the
tower's stage taps, fine-tuned heads, and a version's weights on disk (the only open_clip, timm
and safetensors importer)."""
