//! `groklens sweep slurm`: an `sbatch` job-array script whose every task runs `groklens sweep run` on
//! its shard (the task reads `SLURM_ARRAY_TASK_ID` / `SLURM_ARRAY_TASK_COUNT` itself), written into the
//! sweep directory and submitted.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{GrokError, Result};

/// The array job's settings.
#[derive(Debug, Clone)]
pub struct ArrayJob {
    /// The `groklens` executable the tasks run (an absolute path the nodes can reach).
    pub exe: PathBuf,
    /// The sweep directory (absolute, on a file system the nodes share).
    pub dir: PathBuf,
    /// The sweep's name (the job name).
    pub name: String,
    /// Array tasks (each runs points i, i + tasks, …).
    pub tasks: usize,
    /// Tasks running at once (`%N`), if limited.
    pub parallelism: Option<usize>,
    /// CPUs per task; the task's pool runs this many single-threaded points at once.
    pub cpus_per_task: usize,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time` (e.g. `2:00:00`).
    pub time: Option<String>,
}

impl ArrayJob {
    /// The script's text.
    pub fn script(&self) -> String {
        let q = |p: &Path| shell_quote(&p.display().to_string());
        let mut s = String::from("#!/bin/bash\n");
        s += &format!("#SBATCH --job-name=groklens-{}\n", sanitize(&self.name));
        let limit = self.parallelism.map_or(String::new(), |p| format!("%{p}"));
        s += &format!("#SBATCH --array=0-{}{limit}\n", self.tasks.max(1) - 1);
        s += &format!("#SBATCH --cpus-per-task={}\n", self.cpus_per_task);
        if let Some(p) = &self.partition {
            s += &format!("#SBATCH --partition={p}\n");
        }
        if let Some(t) = &self.time {
            s += &format!("#SBATCH --time={t}\n");
        }
        // Relative to the job's working directory, the sweep directory sbatch is started in (see
        // `submit`): a path with spaces or quotes cannot be written into an #SBATCH line reliably.
        s += "#SBATCH --output=logs/slurm-%A_%a.out\n";
        s += &format!(
            "# submit from the sweep directory: cd {} && sbatch slurm.sh\n",
            q(&self.dir)
        );
        s += "set -euo pipefail\n";
        s += &format!(
            "exec {} sweep run {} --out {} --workers {} --quiet\n",
            q(&self.exe),
            q(&self.dir.join("sweep.toml")),
            q(&self.dir),
            self.cpus_per_task
        );
        s
    }

    /// Writes the script to `DIR/slurm.sh`; returns its path.
    pub fn write(&self) -> Result<PathBuf> {
        let path = self.dir.join("slurm.sh");
        crate::tensor_io::write_bytes_atomic(&path, self.script().as_bytes())?;
        Ok(path)
    }

    /// Submits the script with `sbatch` (`--wait`: until every task has ended, failing if one
    /// failed); returns what sbatch printed.
    pub fn submit(&self, script: &Path, wait: bool) -> Result<String> {
        let mut cmd = Command::new("sbatch");
        if wait {
            cmd.arg("--wait");
        }
        let script = &std::path::absolute(script).unwrap_or_else(|_| script.to_path_buf());
        let out = cmd.arg(script).current_dir(&self.dir).output().map_err(|e| {
            GrokError::file(
                script,
                format!("cannot run sbatch ({e}): is Slurm's client installed here? `--dry-run` writes and prints the script only"),
            )
        })?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(GrokError::file(
                script,
                format!(
                    "sbatch failed ({}): {} {}",
                    out.status,
                    text,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(text)
    }
}

/// `'…'` with embedded quotes escaped, for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A job name: letters, digits, `-`, `_`, `.`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
