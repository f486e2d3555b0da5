"""Benchmarks of the stream client against the vendor's client and naive baselines; run `make bench`."""
