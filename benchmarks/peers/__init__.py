"""The other libraries the benchmarks measure against, each in an environment of its own."""
