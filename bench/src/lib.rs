//! Benchmarks and same-workload baselines (filled in by the loadgen issue).
