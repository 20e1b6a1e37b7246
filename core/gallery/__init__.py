"""The gallery: images in. Decoding and checking files (Pillow), ingest as reader → mapper →
writer into the catalog and the index, and the Debian demo data sets."""
