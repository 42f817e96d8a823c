"""The Python package against the library it wraps: train, open, metrics, split, models, caches,
hooks, errors, Ctrl-C, zero-copy arrays."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import groklens

SMALL = {
    "train.stop_at_test_acc": 0.0,
    "train.eval_every": 10,
    "train.checkpoint_every": 50,
    "model.d_model": 32,
    "model.d_head": 8,
    "model.d_mlp": 64,
}


def small_run(path, epochs=100, **extra):
    return groklens.train(
        preset="quick", out=str(path), overrides={**SMALL, "train.epochs": epochs, **extra}, progress=False
    )


def test_presets_and_configs():
    names = [n for n, _ in groklens.presets()]
    assert names[0] == "tl-grokking-demo" and "quick" in names and "quick-mlp" in names
    cfg = groklens.preset("quick")
    assert cfg["task"]["p"] == 31 and cfg["model"]["family"] == "transformer"
    with pytest.raises(groklens.GrokError, match="unknown preset"):
        groklens.preset("fastest")


def test_a_run_trains_and_reads_back(tmp_path):
    run = small_run(tmp_path / "r")
    assert run.finished and run.checkpoints == [50, 100]
    m = run.metrics
    assert m["epoch"].dtype == np.float64 and list(m["epoch"][:3]) == [1.0, 10.0, 20.0]
    assert m["epoch"][-1] == 100
    # The same history the CLI reads.
    with open(os.path.join(run.path, "metrics.csv")) as f:
        lines = f.read().splitlines()
    assert len(lines) - 1 == len(m["epoch"])
    split = run.split()
    assert split["train_tokens"].shape[1] == 3 and split["train_tokens"].dtype == np.int64
    assert len(split["train_labels"]) + len(split["test_labels"]) == 31 * 31
    reopened = groklens.open(run.path)
    assert reopened.config == run.config and reopened.config["train"]["epochs"] == 100


def test_models_caches_and_hooks(tmp_path):
    run = small_run(tmp_path / "r")
    model = run.model()
    tokens = run.split()["test_tokens"][:5]
    logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (5, 3, 31)
    assert np.array_equal(model.forward(tokens), logits)
    # TransformerLens's names and shorthands.
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["pattern", 0].shape == (5, 4, 3, 3)
    assert np.allclose(cache["pattern", 0].sum(-1), 1.0, atol=1e-5)
    assert list(cache) == [n for n in model.hook_names if not n.endswith("hook_result")]
    # A checkpoint is another model.
    early = run.model(50)
    assert not np.array_equal(early.forward(tokens), logits)
    # The parameters under the state-dict names, and the model rebuilt from them.
    params = model.params
    assert params["blocks.0.attn.W_Q"].shape == (4, 32, 8) and params["embed.W_E"].dtype == np.float32
    # Hooks: a replacement changes the output; returning None keeps it; a wrong shape is refused.
    seen = []

    def zero_head(act, name):
        seen.append(name)
        act = act.copy()
        act[:, :, 0] = 0
        return act

    patched = model.run_with_hooks(tokens, [(("z", 0), zero_head)])
    assert seen == ["blocks.0.attn.hook_z"] and not np.allclose(patched, logits)
    kept = model.run_with_hooks(tokens, [("blocks.0.hook_resid_post", lambda a, n: None)])
    assert np.array_equal(kept, logits)

    def zero_head_in_place(act, name):  # TransformerLens's idiom: edit, return nothing
        act[:, :, 0] = 0

    in_place = model.run_with_hooks(tokens, [(("z", 0), zero_head_in_place)])
    assert np.array_equal(in_place, patched)
    # The cache's arrays view the model's own buffers: no copy, read-only.
    pattern = cache["pattern", 0]
    assert not pattern.flags.owndata and not pattern.flags.writeable and not logits.flags.writeable
    del cache
    assert np.allclose(pattern.sum(-1), 1.0, atol=1e-5)  # still valid: the array keeps its buffer
    with pytest.raises(groklens.GrokError, match="shape"):
        model.run_with_hooks(tokens, [("blocks.0.hook_resid_post", lambda a, n: a[:1])])
    with pytest.raises(groklens.GrokError, match="hook_patern|no hook point|hook_pattern"):
        model.run_with_cache(tokens, names=["blocks.0.attn.hook_patern"])


def test_parameters_are_views_of_the_models_own_buffers(tmp_path):
    model = small_run(tmp_path / "r", epochs=20).model()
    a, b = model.params, model.params
    w = a["embed.W_E"]
    # No copy: both calls view the same memory, owned by the model (kept alive by the array).
    assert not w.flags.owndata and w.base is not None
    assert np.shares_memory(w, b["embed.W_E"])
    assert not w.flags.writeable
    with pytest.raises(ValueError):
        w[0, 0] = 1.0
    del model, b
    assert np.isfinite(w).all()  # still valid after the Model object is gone


def test_a_model_is_rebuilt_from_its_state_dict(tmp_path):
    model = small_run(tmp_path / "r", epochs=20).model()
    tokens = np.array([[1, 31, 2], [5, 31, 7]])
    params = {k: np.array(v) for k, v in model.params.items()}
    again = groklens.Model.from_state_dict(model.cfg, params)
    assert np.array_equal(again.forward(tokens), model.forward(tokens))
    # TransformerLens's buffers are skipped; anything else unknown, missing or misshapen is refused.
    extra = {**params, "blocks.0.attn.mask": np.ones((3, 3), np.float32)}
    groklens.Model.from_state_dict(model.cfg, extra)
    with pytest.raises(groklens.GrokError, match="blocks.0.attn.W_X"):
        groklens.Model.from_state_dict(model.cfg, {**params, "blocks.0.attn.W_X": params["embed.W_E"]})
    missing = dict(params)
    del missing["unembed.W_U"]
    with pytest.raises(groklens.GrokError, match="unembed.W_U"):
        groklens.Model.from_state_dict(model.cfg, missing)
    with pytest.raises(groklens.GrokError, match="embed.W_E"):
        groklens.Model.from_state_dict(model.cfg, {**params, "embed.W_E": params["embed.W_E"][:3]})


def test_analysis_and_report(tmp_path):
    run = small_run(tmp_path / "r")
    a = run.analyze()
    assert a["kind"] == "modular" and a["final_epoch"] == 100
    assert a["freq_norms"].shape == (15,) and all(1 <= k <= 15 for k in a["key_freqs"])
    path = run.report()
    assert path.endswith("report.html") and os.path.getsize(path) > 100_000


def test_errors_name_the_field_or_file(tmp_path):
    with pytest.raises(groklens.GrokError, match=r"task\.p.*\[2, 4096\]"):
        groklens.train(preset="quick", out=str(tmp_path / "bad"), overrides={"task.p": 1}, progress=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(groklens.GrokError, match="config.toml"):
        groklens.open(str(tmp_path))
    run = small_run(tmp_path / "r", epochs=50)
    with pytest.raises(groklens.GrokError, match="at least"):
        run.resume({"train.epochs": 20}, progress=False)
    with pytest.raises(groklens.GrokError, match=r"\[50\]"):
        run.model(30)
    with pytest.raises(groklens.GrokError, match="2-D"):
        run.model().forward(np.zeros(3, dtype=np.int64))
    with pytest.raises(groklens.GrokError, match="vocabulary"):
        run.model().forward(np.full((1, 3), 99, dtype=np.int64))


def test_ctrl_c_stops_with_a_checkpoint_and_the_run_resumes(tmp_path):
    # SIGINT during training arrives as KeyboardInterrupt once the epoch's checkpoint is written.
    # Python's handler set here, as an interactive session has it, whatever launched this test (a
    # non-interactive shell starts its background jobs with SIGINT ignored).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        out = tmp_path / "r"
        timer = threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt, match="train --resume"):
            groklens.train(preset="quick", out=str(out), overrides={**SMALL, "train.epochs": 1_000_000}, progress=False)
        run = groklens.open(str(out))
        assert not run.finished and run.checkpoints
        stopped = run.checkpoints[-1]
        run.resume({"train.epochs": stopped + 20}, progress=False)
        assert run.finished and run.metrics["epoch"][-1] == stopped + 20
        # Python's own handler is back: a second Ctrl-C is an ordinary KeyboardInterrupt.
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGINT, before)


def test_an_ignored_sigint_stays_ignored_while_training(tmp_path):
    # A process that ignores SIGINT (a background job) keeps ignoring it: training does not stop.
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sent = []
        timer = threading.Timer(0.5, lambda: (os.kill(os.getpid(), signal.SIGINT), sent.append(time.time())))
        timer.start()
        run = groklens.train(preset="quick", out=str(tmp_path / "r"), overrides={**SMALL, "train.epochs": 2000}, progress=False)
        ended = time.time()
        timer.join()
        assert sent and sent[0] < ended, "the run ended before the signal was sent; make it longer"
        assert run.finished and run.metrics["epoch"][-1] == 2000
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_training_releases_the_gil(tmp_path):
    ticks = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    t = threading.Thread(target=tick)
    t.start()
    try:
        small_run(tmp_path / "r", epochs=300)
    finally:
        stop.set()
        t.join()
    assert len(ticks) > 10, "another Python thread ran while training"


def test_the_wheel_needs_no_rust(tmp_path):
    # The installed package is the extension module, not a build from this checkout.
    assert groklens._native.__file__.endswith((".so", ".pyd"))
    env = {k: v for k, v in os.environ.items() if k not in ("CARGO_HOME", "RUSTUP_HOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".cargo" not in p)
    out = subprocess.run(
        [sys.executable, "-c", "import groklens; print(len(groklens.presets()))"],
        env=env, capture_output=True, text=True, check=True,
    )
    assert int(out.stdout) >= 10


def test_a_model_from_elsewhere_is_imported_as_a_run(tmp_path):
    source = small_run(tmp_path / "r")
    model = source.model()
    run = groklens.import_run(model, task="quick", out=str(tmp_path / "imported"))
    assert run.finished and run.checkpoints == [0] and list(run.metrics["epoch"]) == [0.0]
    assert abs(run.metrics["test_loss"][0] - source.metrics["test_loss"][-1]) < 1e-6
    assert run.config["model"] == source.config["model"]
    assert np.array_equal(run.model().forward(source.split()["test_tokens"][:4]),
                          model.forward(source.split()["test_tokens"][:4]))
    a, b = run.analyze(), source.analyze()
    assert a["key_freqs"] == b["key_freqs"] and np.allclose(a["freq_norms"], b["freq_norms"])
    assert os.path.exists(run.report())
    # A copy of the page elsewhere; never onto a run's own files.
    copy = run.report(out=str(tmp_path / "page.html"))
    assert copy.endswith("page.html") and os.path.getsize(copy) > 100_000
    with pytest.raises(groklens.GrokError, match="metrics.csv"):
        run.report(out=os.path.join(run.path, "metrics.csv"))
    page = groklens.compare([source, run], out=str(tmp_path / "compare.html"))
    assert os.path.getsize(page) > 100_000
    # A task section instead of a preset; a model that does not fit the task is refused by field.
    task = dict(groklens.preset("quick")["task"])
    groklens.import_run(model, task=task, out=str(tmp_path / "by-task"))
    with pytest.raises(groklens.GrokError, match="d_vocab|vocab"):
        groklens.import_run(model, task={**task, "p": 37}, out=str(tmp_path / "misfit"))
    with pytest.raises(groklens.GrokError, match="already holds a run"):
        groklens.import_run(model, task="quick", out=run.path)


def test_weight_processing_and_circuits(tmp_path):
    model = small_run(tmp_path / "r", epochs=30).model()
    tokens = np.array([[1, 31, 2], [5, 31, 7], [30, 31, 0]])
    logits = model.forward(tokens)
    processed = model.process_weights()
    log_softmax = lambda x: x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
    # center_unembed shifts each logit row by a constant: the probabilities are unchanged.
    assert np.abs(log_softmax(processed.forward(tokens)) - log_softmax(logits)).max() < 1e-4
    # (No LayerNorm here, so, as in TransformerLens, only the unembedding is centred.)
    w_u = processed.params["unembed.W_U"]
    assert np.abs(w_u.mean(-1)).max() < 1e-6 and np.abs(model.params["unembed.W_U"].mean(-1)).max() > 1e-4
    kept = model.process_weights(fold_ln=False, center_writing_weights=False, center_unembed=False,
                                 fold_value_biases=False)
    assert np.array_equal(kept.forward(tokens), logits)
    p = model.params
    qk = model.qk_circuit(0, 1)
    assert qk.shape == (32, 32)
    assert np.allclose(qk, p["blocks.0.attn.W_Q"][1] @ p["blocks.0.attn.W_K"][1].T, atol=1e-5)
    a, b = model.ov_circuit(0, 2, factored=True)
    assert a.shape == (32, 8) and b.shape == (8, 32)
    assert np.allclose(a @ b, p["blocks.0.attn.W_V"][2] @ p["blocks.0.attn.W_O"][2], atol=1e-5)
    full = model.full_ov_circuit(0, 0)
    w_e, w_u = p["embed.W_E"], p["unembed.W_U"]
    ov = p["blocks.0.attn.W_V"][0] @ p["blocks.0.attn.W_O"][0]
    assert full.shape == (32, 31) and np.allclose(full, w_e @ ov @ w_u, atol=1e-4)
    assert model.ov_to_neurons(0, 0).shape == (32, 64)
    assert model.full_qk_circuit(0, 3).shape == (32, 32)
    with pytest.raises(groklens.GrokError, match="head"):
        model.qk_circuit(0, 4)
    mlp = groklens.train(preset="quick-mlp", out=str(tmp_path / "m"), overrides={"train.epochs": 5},
                         progress=False).model()
    with pytest.raises(groklens.GrokError, match="model.family = mlp"):
        mlp.process_weights()
    with pytest.raises(groklens.GrokError, match="model.family = mlp"):
        mlp.qk_circuit(0, 0)


def test_a_sweep_runs_in_worker_processes_and_indexes_its_points(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'name = "py-test"\npreset = "quick"\n'
        'set = { "train.epochs" = 40, "train.checkpoint_every" = 20, "model.d_model" = 32, '
        '"model.d_head" = 8, "model.d_mlp" = 64 }\n'
        '[grid]\n"task.train_frac" = [0.4, 0.6]\n'
    )
    out = tmp_path / "sweep"
    sweep = groklens.sweep(str(spec), str(out), workers=2, progress=False)
    index = sweep.index
    assert len(index) == 2 and index["status"] == ["finished", "finished"]
    assert list(index["task.train_frac"]) == [0.4, 0.6]
    assert index["epochs"].dtype == np.float64 and list(index["epochs"]) == [40.0, 40.0]
    first = sweep.run(index["point"][0])
    assert first.finished and os.path.exists(os.path.join(first.path, "report.html"))
    assert index.rows()[1]["point"] == index["point"][1]
    # Again: every point is kept.
    assert len(groklens.sweep(str(spec), str(out), progress=False).index) == 2
    with pytest.raises(KeyError, match="test_acc"):
        index["test_accuracy"]
    with pytest.raises(groklens.GrokError, match="spec|no such|not found|cannot read"):
        groklens.sweep(str(tmp_path / "missing.toml"), str(tmp_path / "s2"), progress=False)
    # The worker entry point refuses anything but a worker's arguments.
    bad = subprocess.run([sys.executable, "-m", "groklens", "train"], capture_output=True, text=True)
    assert bad.returncode == 2 and "sweep worker" in bad.stderr
