"""Batch scoring that reads only what a forecast uses: selection of the rows, windows of a chunk of series,
the Spark entry point and the command line (Hydra-free, so that it runs with the `serve` extra alone)."""
