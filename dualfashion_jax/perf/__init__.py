"""Performance models and measured programs: the synthetic train step (`step`), the partitioned programs
(`programs`), the FLOP model (`flops`) and the memory model (`memory`). Used by benchmarks/ and tests; the
top layer of the package (it may import anything, nothing imports it)."""
