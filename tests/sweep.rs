//! A sweep through a real single-node Slurm: Debian's `slurmctld` and `slurmd` started on localhost
//! under a temp dir (no systemd: `auth/none`, `proctrack/linuxproc`, `task/none`, the node's topology
//! from `slurmd -C`), `groklens sweep slurm --wait` submitting the array, each task running its shard.
//! The README's test command (`scripts/test.sh`) installs the packages; where they are missing the
//! test fails saying how to install them. The sweep directory's path holds a space, a quote and
//! non-ASCII letters, which the array script must survive.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use groklens::run::RunDir;

mod common;
use common::bin::groklens;

/// The two daemons, stopped (by PID) when dropped.
struct Cluster {
    daemons: Vec<Child>,
    conf: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn installed() -> Result<(), String> {
    for tool in ["slurmctld", "slurmd", "sbatch", "sinfo"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!(
                "`{tool}` is not installed (apt-get install slurmctld slurmd slurm-client munge)"
            ));
        }
    }
    // slurmd runs jobs as their submitting user and must be root to do so.
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root: slurmd cannot run jobs here".into());
    }
    Ok(())
}

/// Writes `slurm.conf` under `d` with this machine's topology and starts both daemons.
fn start_cluster(d: &Path) -> Cluster {
    for sub in ["state", "spool", "run", "log"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let probe = Command::new("slurmd").arg("-C").output().unwrap();
    let line = String::from_utf8_lossy(&probe.stdout)
        .lines()
        .find(|l| l.starts_with("NodeName="))
        .expect("slurmd -C prints the node")
        .to_string();
    let mut node = String::from("NodeName=localhost");
    for field in line.split_whitespace().skip(1) {
        match field.split_once('=') {
            Some(("RealMemory", mb)) => {
                let mb: u64 = mb.parse().unwrap();
                node += &format!(" RealMemory={}", mb.saturating_sub(512).max(1));
            }
            Some((k, _))
                if [
                    "CPUs",
                    "Boards",
                    "SocketsPerBoard",
                    "CoresPerSocket",
                    "ThreadsPerCore",
                ]
                .contains(&k) =>
            {
                node += &format!(" {field}");
            }
            _ => {}
        }
    }
    let p = |s: &str| d.join(s).display().to_string();
    let conf = format!(
        "ClusterName=groklens-test\nSlurmctldHost=localhost\nSlurmUser=root\nAuthType=auth/none\n\
         CredType=cred/none\nStateSaveLocation={}\nSlurmdSpoolDir={}\nSlurmctldPidFile={}\n\
         SlurmdPidFile={}\nSlurmctldLogFile={}\nSlurmdLogFile={}\nProctrackType=proctrack/linuxproc\n\
         TaskPlugin=task/none\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
         JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
         JobCompType=jobcomp/none\nMpiDefault=none\nMailProg=/bin/true\nReturnToService=2\n\
         {node} State=UNKNOWN\nPartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
        p("state"),
        p("spool"),
        p("run/slurmctld.pid"),
        p("run/slurmd.pid"),
        p("log/slurmctld.log"),
        p("log/slurmd.log"),
    );
    let conf_path = d.join("slurm.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let daemon = |cmd: &mut Command| {
        cmd.env("SLURM_CONF", &conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let ctld = daemon(
        Command::new("slurmctld")
            .args(["-D", "-i", "-f"])
            .arg(&conf_path),
    );
    let slurmd = daemon(
        Command::new("slurmd")
            .args(["-D", "-N", "localhost", "-f"])
            .arg(&conf_path),
    );
    let cluster = Cluster {
        daemons: vec![ctld, slurmd],
        conf: conf_path,
    };
    let started = Instant::now();
    loop {
        let state = Command::new("sinfo")
            .args(["-h", "-N", "-o", "%t"])
            .env("SLURM_CONF", &cluster.conf)
            .output()
            .unwrap();
        if String::from_utf8_lossy(&state.stdout).trim() == "idle" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the node did not come up: {}",
            std::fs::read_to_string(d.join("log/slurmctld.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster
}

#[test]
fn a_sweep_runs_as_a_slurm_job_array() {
    if let Err(why) = installed() {
        panic!("the Slurm sweep test cannot run: {why}; `bash scripts/test.sh` installs Slurm");
    }
    let tmp = tempfile::tempdir().unwrap();
    let cluster = start_cluster(&tmp.path().join("slurm"));
    let spec = tmp.path().join("spec.toml");
    std::fs::write(
        &spec,
        r#"
        name = "slurm-test"
        preset = "quick"
        set = { "train.epochs" = 300, "train.checkpoint_every" = 100 }
        [grid]
        "task.train_frac" = [0.5, 0.7]
        [seeds]
        count = 2
        keys = ["model.seed"]
        "#,
    )
    .unwrap();
    let dir = tmp.path().join("a b'c — ü").join("sweep dir");
    let groklens = || {
        let mut cmd = groklens();
        cmd.env("SLURM_CONF", &cluster.conf);
        cmd
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    let dry = groklens()
        .args(["sweep", "slurm"])
        .arg(&spec)
        .arg("--out")
        .arg(&dir)
        .args(["--tasks", "2", "--dry-run"])
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let script = text(&dry.stdout);
    assert!(script.contains("#SBATCH --array=0-1\n"), "{script}");
    assert!(script.contains("sweep run"), "{script}");

    let out = groklens()
        .args(["sweep", "slurm"])
        .arg(&spec)
        .arg("--out")
        .arg(&dir)
        .args(["--tasks", "2", "--cpus-per-task", "1", "--wait"])
        .output()
        .unwrap();
    let logs = || {
        std::fs::read_dir(dir.join("logs"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        format!(
                            "{}:\n{}",
                            e.path().display(),
                            std::fs::read_to_string(e.path()).unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        logs()
    );
    // Each array task ran its own shard: two task logs, two points each.
    let task_logs: Vec<String> = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("slurm-"))
        .collect();
    assert_eq!(task_logs.len(), 2, "{task_logs:?}");
    let all = logs();
    assert!(all.contains("shard 0/2: 2 of 4 points"), "{all}");
    assert!(all.contains("shard 1/2: 2 of 4 points"), "{all}");

    let report = groklens()
        .args(["sweep", "report"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", text(&report.stderr));
    let index = std::fs::read_to_string(dir.join("index.csv")).unwrap();
    assert_eq!(index.matches(",finished,").count(), 4, "{index}");
    for name in ["task.train_frac-0.5__seed-0", "task.train_frac-0.7__seed-1"] {
        assert!(RunDir::new(dir.join("runs").join(name))
            .final_path()
            .exists());
    }
}
