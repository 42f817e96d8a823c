//! The whole pipeline on the quick presets: they grok (memorise first, then generalise), the
//! analysis finds the same key frequencies in the embedding and in the neuron clusters, and the HTML
//! reports and the comparison page render in headless Chromium, offline, with no console error and
//! every figure drawn.

use std::path::{Path, PathBuf};
use std::process::Command;

use groklens::analysis::analyze_modular_run;
use groklens::presets::preset;
use groklens::report::write_modular_report;
use groklens::run::{grokking_epoch, metrics, MetricsRow, RunDir};
use groklens::train::Trainer;

mod common;
use common::bin::{groklens, wait_until};

#[test]
fn quick_preset_groks_and_its_report_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::new(tmp.path().join("quick"));
    let mut t = Trainer::create(preset("quick").unwrap(), &dir).unwrap();
    let outcome = t.run(&mut |_| {}).unwrap();
    let last = outcome.last.unwrap();
    assert!(
        last.test_acc >= 0.95,
        "test accuracy {} after {} epochs",
        last.test_acc,
        outcome.epochs
    );
    let memorised = t
        .history
        .iter()
        .find(|r| r.train_acc >= 0.99)
        .map(|r| r.epoch)
        .unwrap();
    let generalised = grokking_epoch(&t.history, 0.95).unwrap();
    assert!(
        memorised < generalised,
        "train accuracy should saturate before test accuracy ({memorised} vs {generalised})"
    );

    let summary = write_modular_report(&dir.root).unwrap();
    let a = &summary.analysis;
    let neurons = a.neurons.as_ref().unwrap();
    assert!(!a.embed.key_freqs.is_empty());
    assert_eq!(
        a.embed.key_freqs,
        neurons.fourier.cluster_freqs(),
        "key frequencies of the embedding and of the neuron clusters agree"
    );
    assert!(neurons.fourier.clustered_fraction() > 0.3);
    assert_eq!(a.phases.memorisation_end, Some(memorised));
    assert!(a.progress.len() >= 2, "every checkpoint is scored");
    // The first point is the initial model, rebuilt from the seed: near-uniform predictions.
    let start = &a.progress[0];
    assert_eq!(start.epoch, 0);
    let uniform = (a.cfg.task.outputs() as f64).ln();
    assert!((start.restricted_loss.unwrap() - uniform).abs() < 0.5);
    assert!((start.excluded_loss.unwrap() - uniform).abs() < 0.5);
    // Once grokked, the key-frequency part alone predicts well and removing it hurts the train loss.
    let end = a.progress.last().unwrap();
    let (restricted, excluded) = (end.restricted_loss.unwrap(), end.excluded_loss.unwrap());
    assert!(restricted < 0.5, "restricted loss {restricted}");
    assert!(excluded > 1.0, "excluded loss {excluded}");
    assert!(summary.text().contains("key frequencies"));

    let html = std::fs::read_to_string(&summary.path).unwrap();
    assert!(summary.bytes < 15_000_000, "{} bytes", summary.bytes);
    for id in [
        "training",
        "progress",
        "embedding",
        "neurons",
        "logits",
        "attention",
    ] {
        assert!(html.contains(&format!("<section id=\"{id}\">")), "{id}");
    }
    assert!(
        !html.contains("<script src="),
        "no external scripts: the page works offline"
    );

    check_in_browser(&summary.path, 20, "report-screenshot.png");
}

#[test]
fn quick_mlp_groks_and_its_report_renders_without_attention() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::new(tmp.path().join("quick-mlp"));
    let mut cfg = preset("quick-mlp").unwrap();
    cfg.train.threads = 2;
    let mut t = Trainer::create(cfg, &dir).unwrap();
    let last = t.run(&mut |_| {}).unwrap().last.unwrap();
    assert!(last.test_acc >= 0.99, "{last:?}");
    assert!(last.output_spectral_norm > 0.0);
    let summary = write_modular_report(&dir.root).unwrap();
    let a = &summary.analysis;
    let neurons = a.neurons.as_ref().unwrap();
    assert_eq!(neurons.acts.cols, 128, "the hidden layer's neurons");
    assert!(!a.embed.key_freqs.is_empty());
    let clusters = neurons.fourier.cluster_freqs();
    assert!(
        a.embed.key_freqs.iter().all(|k| clusters.contains(k)),
        "every key frequency of the embedding has a neuron cluster: {:?} vs {clusters:?}",
        a.embed.key_freqs
    );
    assert!(neurons.fourier.clustered_fraction() > 0.3);
    assert!(a.attention.is_empty());
    let end = a.progress.last().unwrap();
    assert!(end.restricted_loss.unwrap() < end.excluded_loss.unwrap());
    assert!(end.gini_logit.unwrap() > a.progress[0].gini_logit.unwrap());
    let html = std::fs::read_to_string(&summary.path).unwrap();
    for id in ["training", "progress", "embedding", "neurons", "logits"] {
        assert!(html.contains(&format!("<section id=\"{id}\">")), "{id}");
    }
    assert!(
        !html.contains("<section id=\"attention\">"),
        "an MLP has no attention section, not an empty one"
    );
    assert!(html.contains("Spectral norm of the output layer"));
    assert!(html.contains("MLP: 4 token embeddings of 32"));
    check_in_browser(&summary.path, 20, "report-mlp-screenshot.png");
}

/// `groklens grok --preset quick-seed-004`: the quick transformer and the quick binarized BitNet are
/// trained, reported and compared; the BitNet groks (test accuracy lagging train accuracy), its report
/// has the quantized-weight section, and both pages draw in Chromium. A second call reuses the runs.
#[test]
fn quick_seed_004_compares_a_grokking_binary_bitnet_with_a_transformer() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("q4");
    let grok = || {
        let out = groklens()
            .args(["grok", "--preset", "quick-seed-004", "--quiet", "--out"])
            .arg(&root)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(out.status.success(), "{}", text(&out.stderr));
        (text(&out.stdout), text(&out.stderr))
    };
    let (stdout, _) = grok();
    assert!(stdout.contains("comparison: "), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("quick-bitnet-binary:") && l.contains("with the fast engine")),
        "{stdout}"
    );

    let bitnet = root.join("quick-bitnet-binary");
    let metrics = metrics::read(&RunDir::new(&bitnet).metrics_path()).unwrap();
    let first = |f: fn(&MetricsRow) -> f64| metrics.iter().find(|r| f(r) >= 0.99).unwrap().epoch;
    let (memorised, generalised) = (first(|r| r.train_acc), first(|r| r.test_acc));
    assert!(
        generalised >= memorised + 300,
        "test accuracy should lag train accuracy (grokking): {memorised} vs {generalised}"
    );
    assert!(metrics.last().unwrap().test_acc >= 0.999);

    let a = analyze_modular_run(&bitnet).unwrap();
    let q = a
        .quantized
        .as_ref()
        .expect("a BitNet run has quantized weights");
    let t = &q.trajectory;
    let epochs: Vec<usize> = a.progress.iter().map(|p| p.epoch).collect();
    assert_eq!(
        t.epochs, epochs,
        "one entry per checkpoint, from the initial weights"
    );
    for counts in &t.counts {
        let sums: Vec<usize> = counts.iter().map(|c| c.iter().sum()).collect();
        assert_eq!(sums, t.sizes);
    }
    let flips = t.total_flips();
    assert_eq!(flips[0], 0);
    assert!(
        flips[1..].iter().all(|&f| f > 0),
        "signs keep moving: {flips:?}"
    );
    let from_final = t.total_from_final();
    assert_eq!(
        *from_final.last().unwrap(),
        0,
        "the last checkpoint is the final model"
    );
    assert!(from_final[0] > from_final[from_final.len() / 2]);
    let fixed = t.fixed_for_good();
    assert!(fixed.windows(2).all(|w| w[0] <= w[1]) && *fixed.last().unwrap() == 1.0);
    // Read through the embedding, W_in's sign rows weigh the key frequencies well above chance.
    let f = &q.first_ffn;
    let keys = &a.embed.key_freqs;
    let on_keys: f32 = (0..f.freq_share.cols)
        .map(|n| keys.iter().map(|&k| f.freq_share.at(k - 1, n)).sum::<f32>())
        .sum::<f32>()
        / f.freq_share.cols as f32;
    let chance = keys.len() as f32 / f.freq_share.rows as f32;
    assert!(
        on_keys > 1.5 * chance,
        "{on_keys} of W_in on {keys:?}, chance {chance}"
    );

    let report = bitnet.join("report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("<section id=\"quantized\">"));
    assert!(html.contains("Fraction of each BitLinear weight at +1"));
    check_in_browser(&report, 20, "report-bitnet-screenshot.png");

    let compare = root.join("compare.html");
    let html = std::fs::read_to_string(&compare).unwrap();
    for run in ["quick", "quick-bitnet-binary"] {
        assert!(
            html.contains(&format!("<b>{run}</b>")),
            "{run} has a column"
        );
    }
    assert!(html.contains("full precision") && html.contains("Neurons per frequency cluster"));
    check_in_browser(&compare, 5, "compare-screenshot.png");

    let (_, stderr) = grok();
    assert_eq!(
        stderr.matches("already trained, reusing it").count(),
        2,
        "{stderr}"
    );
}

/// Debian's Chromium, or `$CHROMIUM`.
/// `groklens grok --preset quick-prev-token`: a small seed-003 model (LayerNorm, no positional
/// embedding) learns the previous token on the fast engine; the sequence report finds a head attending
/// to BOS as 1/(i+1), the mean-ablation sweep covers every hook point with a residual-stream hook hurting most,
/// and the page draws in Chromium.
#[test]
fn quick_prev_token_learns_the_previous_token_and_its_report_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qp");
    let out = groklens()
        .args(["grok", "--preset", "quick-prev-token", "--quiet", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("400 steps") && stdout.contains("with the fast engine"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("grokked"),
        "a stream has no grokking epoch: {stdout}"
    );
    let metrics = metrics::read(&RunDir::new(&dir).metrics_path()).unwrap();
    let last = metrics.last().unwrap();
    assert!(last.test_acc > 0.95 && last.test_loss < 0.2, "{last:?}");

    let a = groklens::analysis::sequence::analyze_sequence_run(&dir).unwrap();
    assert_eq!(a.loss_by_position.len(), 11);
    assert_eq!(a.heads, ["L0H0", "L1H0"]);
    for m in &a.mean_patterns {
        for q in 0..12 {
            let row: f32 = (0..12).map(|k| m.at(q, k)).sum();
            assert!((row - 1.0).abs() < 1e-4, "attention rows sum to 1");
            assert!((q + 1..12).all(|k| m.at(q, k) == 0.0), "causal");
        }
    }
    assert!(
        a.findings().iter().any(|f| f.contains("BOS")),
        "{:?}",
        a.findings()
    );
    let sorted = a.ablation_sorted();
    let clean = a.ablation[0].loss;
    assert!(sorted[0].loss > 10.0 * clean, "{:?}", &sorted[..3]);
    // Replacing the whole residual stream (or the embedding feeding it) by its mean erases the tokens.
    let top = &sorted[0].hook;
    assert!(
        top == "hook_embed" || top.contains("hook_resid"),
        "{:?}",
        sorted[0]
    );
    assert!(sorted.iter().all(|r| r.hook != "hook_pos_embed"));
    assert_eq!(
        a.dla_labels,
        [
            "embed",
            "0_attn_out",
            "0_mlp_out",
            "1_attn_out",
            "1_mlp_out"
        ]
    );
    check_in_browser(
        &dir.join("report.html"),
        14,
        "report-prev-token-screenshot.png",
    );
}

/// `groklens grok` on a small compound expression trains and writes the compound report (operand
/// spectra, attention from `=`, accuracy by exponent), which draws in Chromium. Then, on a
/// hand-built attention-only model of the same shape whose number embedding is one Fourier
/// frequency and whose attention is uniform, every operand's response is that frequency alone and
/// each position gets a tenth of the last position's attention.
#[test]
fn compound_report_reads_each_operand_and_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cp");
    let sets = [
        "task.p=11",
        "model.d_model=32",
        "model.n_heads=2",
        "model.d_head=16",
        "model.attn_only=true",
        "train.epochs=20",
        "train.eval_every=5",
        "train.checkpoint_every=10",
    ];
    let mut cmd = groklens();
    cmd.args(["grok", "--preset", "compound-small", "--quiet", "--out"])
        .arg(&dir);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("report:") && stdout.contains("Operand d"),
        "{stdout}"
    );
    check_in_browser(
        &dir.join("report.html"),
        6,
        "report-compound-screenshot.png",
    );

    // The hand-built model: W_E[v] = (cos 2πkv/p, sin 2πkv/p, 0, …), symbols and W_pos zero, W_Q = W_K
    // = 0 (uniform causal attention), W_V and W_O copying the first two dimensions.
    let (p, k) = (11usize, 3usize);
    let run = RunDir::new(&dir);
    let cfg = run.load_config().unwrap();
    let model = cfg.model.transformer().unwrap().clone();
    let tree = model.tree();
    let mut params = groklens::model::Params::load(&run.final_path(), &cfg.model).unwrap();
    let (dm, dh, nh) = (model.d_model, model.d_head, model.n_heads);
    for slot in [tree.embed, tree.pos] {
        params[slot].fill(0.0);
    }
    for v in 0..p {
        let angle = 2.0 * std::f32::consts::PI * (k * v) as f32 / p as f32;
        params[tree.embed][v * dm] = angle.cos();
        params[tree.embed][v * dm + 1] = angle.sin();
    }
    let attn = &tree.blocks[0].attn;
    for slot in [
        attn.w_q, attn.w_k, attn.w_v, attn.w_o, attn.b_q, attn.b_k, attn.b_v, attn.b_o,
    ] {
        params[slot].fill(0.0);
    }
    for h in 0..nh {
        for i in 0..2 {
            params[attn.w_v][(h * dm + i) * dh + i] = 1.0;
            params[attn.w_o][(h * dh + i) * dm + i] = 1.0;
        }
    }
    params
        .save(
            &run.final_path(),
            [("epoch".to_string(), "20".to_string())].into(),
        )
        .unwrap();
    let a = groklens::analysis::compound::analyze_compound_run(&dir).unwrap();
    assert_eq!(a.embed.key_freqs, [k]);
    assert_eq!(a.heads, ["L0H0", "L0H1"]);
    for o in &a.operands {
        assert_eq!(o.key_freqs, [k], "operand {}", o.name);
        assert!(o.key_share > 0.999, "operand {}: {}", o.name, o.key_share);
        for &w in &o.attention {
            assert!((w - 0.1).abs() < 1e-5, "operand {}: {w}", o.name);
        }
    }
    assert_eq!(a.accuracy_by_exponent.len(), p);
    assert!(a.scored_rows > 0);
}

/// `groklens sweep run` on two points that never grok (so they run to their last epoch), killed with
/// its workers part-way: the second call skips nothing finished, resumes the interrupted points from
/// their checkpoints (every evaluation recorded exactly once) and finishes; the sweep page draws.
#[test]
fn a_killed_sweep_resumes_and_its_page_renders() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("spec.toml");
    std::fs::write(
        &spec,
        r#"
        name = "resume-test"
        preset = "quick"
        set = { "train.epochs" = 1500, "train.checkpoint_every" = 100, "train.stop_at_test_acc" = 0.0 }
        [grid]
        "task.train_frac" = [0.3, 0.35]
        "#,
    )
    .unwrap();
    let dir = tmp.path().join("sweep");
    let sweep = || {
        let mut cmd = groklens();
        cmd.args(["sweep", "run"])
            .arg(&spec)
            .arg("--out")
            .arg(&dir)
            .args(["--workers", "2", "--quiet"]);
        cmd
    };
    let mut first = sweep().process_group(0).spawn().unwrap();
    let point = |frac: &str| RunDir::new(dir.join("runs").join(format!("task.train_frac-{frac}")));
    // Kill once both points hold a checkpoint past epoch 300, before either is done.
    wait_until(
        "checkpoints past 300",
        std::time::Duration::from_secs(300),
        || {
            assert!(
                first.try_wait().unwrap().is_none(),
                "the sweep ended before it was killed"
            );
            ["0.3", "0.35"].iter().all(|f| {
                groklens::run::checkpoint::list_epochs(&point(f).checkpoint_dir())
                    .last()
                    .is_some_and(|&e| e >= 300)
            })
        },
    );
    let group = first.id() as i32;
    Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .status()
        .unwrap();
    first.wait().unwrap();
    for f in ["0.3", "0.35"] {
        assert!(
            !point(f).final_path().exists(),
            "{f} finished before the kill"
        );
    }
    let out = sweep().output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2 finished now, 0 already finished"),
        "{}",
        text(&out.stdout)
    );
    let log = std::fs::read_to_string(dir.join("logs").join("task.train_frac-0.3.log")).unwrap();
    assert!(log.contains("resuming"), "{log}");
    for f in ["0.3", "0.35"] {
        let history = metrics::read(&point(f).metrics_path()).unwrap();
        let epochs: Vec<usize> = history.iter().map(|r| r.epoch).collect();
        let expected: Vec<usize> = (1..=150).map(|i| 10 * i).collect();
        assert_eq!(epochs[1..], expected[..], "{f}: every evaluation once");
        assert!(point(f).root.join("report.html").exists());
    }
    let index = std::fs::read_to_string(dir.join("index.csv")).unwrap();
    assert_eq!(index.matches(",finished,").count(), 2, "{index}");
    // A third call has nothing to do.
    let again = sweep().output().unwrap();
    assert!(text(&again.stdout).contains("0 finished now, 2 already finished"));

    let page = groklens()
        .args(["sweep", "report"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(page.status.success(), "{}", text(&page.stderr));
    check_in_browser(&dir.join("sweep.html"), 3, "sweep-screenshot.png");
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn headless(profile: &Path) -> Command {
    let mut cmd = Command::new(chromium().unwrap());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        // Network off: every request goes to a closed local port.
        "--proxy-server=http://127.0.0.1:9",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=30000",
        "--window-size=1400,2400",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// Opens `report` in headless Chromium, offline: no script error or console output, at least
/// `min_figures` figures and every one drawn; then takes a screenshot.
fn check_in_browser(report: &Path, min_figures: usize, screenshot: &str) {
    if chromium().is_none() {
        if std::env::var_os("GROKLENS_SKIP_BROWSER").is_some() {
            eprintln!("GROKLENS_SKIP_BROWSER set: not opening the report in Chromium");
            return;
        }
        panic!(
            "Chromium not found: install Debian's `chromium` package (.ci/run does), set CHROMIUM=/path, \
             or set GROKLENS_SKIP_BROWSER=1 to skip this check"
        );
    }
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", report.display());
    let out = headless(profile.path())
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let body = dom
        .split("<body")
        .nth(1)
        .and_then(|b| b.split('>').next())
        .unwrap_or_else(|| panic!("no <body> in the rendered DOM; stderr:\n{stderr}"));
    let attr = |name: &str| -> String {
        body.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|v| v.split('"').next())
            .unwrap_or_else(|| panic!("the page never finished drawing ({name} missing): {body}"))
            .to_string()
    };
    let figures: usize = attr("data-figures").parse().unwrap();
    let rendered: usize = attr("data-rendered").parse().unwrap();
    assert_eq!(
        attr("data-errors"),
        "0",
        "script errors: {}",
        attr("data-error-text")
    );
    assert!(figures >= min_figures, "{figures} figures");
    assert_eq!(rendered, figures, "every figure drew an SVG");
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "the page wrote to the console:\n{}",
        console.join("\n")
    );

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(screenshot);
    let _ = std::fs::remove_file(&shot);
    let status = headless(profile.path())
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(status.status.success(), "screenshot failed");
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}
