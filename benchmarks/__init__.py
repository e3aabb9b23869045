"""tickfold's benchmark suite: ``python -m benchmarks [NAME...] [--quick] [--json FILE]``."""
