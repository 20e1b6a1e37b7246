"""Search: vectors to ranked images. The per-version vector index (the only chromadb importer,
typed `Hit`s out) and Rocchio refinement with a query's labelled results."""
