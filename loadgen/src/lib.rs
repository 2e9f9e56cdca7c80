//! loadgen's library half, shared with the baselines in `bench/` so that every stack runs the
//! same workloads and reports in the same form: the workload flags, pacing and measurement
//! window ([`workload`]), the report with its JSON schema and HdrHistogram logs ([`report`]),
//! and SVG charts ([`chart`]).

pub mod chart;
pub mod report;
pub mod workload;

pub use report::{Counts, LatencyLog, Report};
pub use workload::{Mode, Pacer, Window, Workload, WorkloadArgs};
