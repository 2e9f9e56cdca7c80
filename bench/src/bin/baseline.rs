//! `baseline`: loadgen's workloads over the stacks a user would pick instead of ringwire
//! (blocking std sockets, tokio with `LengthDelimitedCodec`, tokio-uring), reporting in
//! loadgen's schema. See the `ringwire_bench` crate docs for what each stack does.
//!
//! ```text
//! baseline --stack std|tokio|tokio-uring [--mode throughput|latency|fanin|pingpong] [--size B]
//!          [--conns N] [--rate MSGS_PER_S] [--duration 10s] [--warmup 1s] [--busy-poll]
//!          [--json PATH|-] [--out DIR]
//! ```
//!
//! Exit codes: 0 after a report, 1 when the run failed (an I/O error, a broken frame), 2 for
//! bad flags or a workload the chosen stack does not run.

use std::process::ExitCode;

use clap::Parser;
use loadgen::WorkloadArgs;
use ringwire_bench::{Error, Stack};

/// Runs a loadgen workload over a baseline stack and reports in loadgen's schema.
#[derive(Debug, Parser)]
#[command(name = "baseline")]
struct Cli {
    /// The stack that carries the messages.
    #[arg(long, value_enum)]
    stack: Stack,
    #[command(flatten)]
    workload: WorkloadArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let w = match cli.workload.resolve(PAYLOAD_LEN_MAX) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("baseline: {e}");
            return ExitCode::from(2);
        }
    };
    match ringwire_bench::run(cli.stack, &w) {
        Ok(outcome) => match outcome.emit(&w) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baseline: writing the report: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e @ Error::Unsupported(_)) => {
            eprintln!("baseline: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("baseline: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The largest `--size`: 16 MiB, the frame limit every baseline's codec is set to.
const PAYLOAD_LEN_MAX: usize = 16 << 20;
