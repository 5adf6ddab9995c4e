"""Files other tools read and write: TRIDENT and CLAM feature files, TRIDENT patch coordinates, QuPath GeoJSON.

One module per peer format (`trident`, `clam`, `qupath`), each with a written spec of the format taken from the peer's
own reading and writing code; `grid` places foreign tile coordinates on mixmag's cell grid and `assemble` builds a
store from per-level feature files, strictly. Same layer as `store`.
"""
