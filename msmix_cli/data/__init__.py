"""Data: dataset records, readers of the published formats, the cache, and the synthetic benchmark."""
