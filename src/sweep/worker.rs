//! What a pool worker process is told: one point of one sweep. The pool builds these arguments with
//! [`WorkerArgs::to_args`] and the CLI parses them with the same struct (a hidden `groklens sweep
//! worker` subcommand), so a renamed option fails to compile instead of failing at run time; the
//! work itself is `api::sweeps::work_on_point`.

use std::ffi::OsString;
use std::path::PathBuf;

/// One point of a sweep, to train (or resume) and report.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct WorkerArgs {
    /// The sweep directory.
    pub sweep: PathBuf,
    /// The point's name (its folder under `runs/`).
    pub point: String,
    /// Engine threads for the run (`train.threads`; 0 = one per core).
    #[arg(long)]
    pub threads: usize,
    /// Write the point's report once it is trained.
    #[arg(long)]
    pub report: bool,
}

impl WorkerArgs {
    /// The command line after `groklens` that runs this worker.
    pub fn to_args(&self) -> Vec<OsString> {
        let WorkerArgs {
            sweep,
            point,
            threads,
            report,
        } = self;
        let mut args: Vec<OsString> = vec![
            "sweep".into(),
            "worker".into(),
            sweep.into(),
            point.into(),
            "--threads".into(),
            threads.to_string().into(),
        ];
        if *report {
            args.push("--report".into());
        }
        args
    }

    /// Parses what [`WorkerArgs::to_args`] wrote (for a front end without the CLI's parser, such as
    /// `python -m groklens`); the error is the parser's message.
    pub fn from_args(args: &[OsString]) -> Result<WorkerArgs, String> {
        use clap::{Args, FromArgMatches};
        if args.len() < 2 || args[0] != "sweep" || args[1] != "worker" {
            return Err(
                "expected `sweep worker SWEEP POINT --threads N [--report]` (the arguments a sweep \
                 pool starts its workers with); for everything else use the groklens command line"
                    .into(),
            );
        }
        let cmd = WorkerArgs::augment_args(clap::Command::new("sweep worker"));
        let m = cmd
            .try_get_matches_from(
                std::iter::once(OsString::from("worker")).chain(args[2..].iter().cloned()),
            )
            .map_err(|e| e.to_string())?;
        WorkerArgs::from_arg_matches(&m).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Command, FromArgMatches};

    /// The arguments the pool writes parse back into the same worker, whatever the path holds.
    #[test]
    fn worker_arguments_round_trip_through_the_parser() {
        for report in [false, true] {
            let w = WorkerArgs {
                sweep: PathBuf::from("a b'c — ü/sweep dir"),
                point: "task.train_frac-0.3".into(),
                threads: 3,
                report,
            };
            let cmd = WorkerArgs::augment_args(Command::new("worker"));
            let m = cmd
                .try_get_matches_from(
                    std::iter::once("worker".into()).chain(w.to_args().into_iter().skip(2)),
                )
                .unwrap();
            assert_eq!(WorkerArgs::from_arg_matches(&m).unwrap(), w);
            assert_eq!(WorkerArgs::from_args(&w.to_args()).unwrap(), w);
        }
        let e = WorkerArgs::from_args(&["train".into()]).unwrap_err();
        assert!(e.contains("sweep worker"), "{e}");
        let e =
            WorkerArgs::from_args(&["sweep".into(), "worker".into(), "dir".into()]).unwrap_err();
        assert!(e.contains("POINT") || e.contains("point"), "{e}");
    }
}
