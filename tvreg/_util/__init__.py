"""Small helpers with no tvreg dependencies: the download/decode pipeline, paths, progress."""
