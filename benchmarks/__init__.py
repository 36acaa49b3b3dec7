"""Speed of falcon_hf against transformers' built-in Falcon and keras-hub's Falcon: `python benchmarks/bench.py --help`."""
