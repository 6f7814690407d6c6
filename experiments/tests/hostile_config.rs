//! Hostile and careless input to the `ditmoe` binary: every bad config, flag, input tensor or
//! tampered checkpoint is refused before work starts, with exit code 1, a message starting with
//! `error:` and naming the field (never a panic, an abort or a run without end).

use ditmoe_nn::checkpoint::{read_tensors, write_tensors};
use ditmoe_tensor::Tensor;
mod common;

use common::{ditmoe, fixture, scratch, stderr, tiny_config, train, TOKEN_CHOICE};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Asserts a clean refusal: exit code 1 (not a panic's 101 or a signal), `error:` first, and
/// every one of `needles` in the message.
fn assert_refused(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error:"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    }
}

/// A fresh folder `hostile-NAME` for one test.
fn temp_dir(name: &str) -> PathBuf {
    scratch(&format!("hostile-{name}"))
}

/// A tiny flow MoE config of one step without a `[sample]` table; tests change one line of it.
fn tiny() -> String {
    tiny_config(1, 2, 1, TOKEN_CHOICE)
}

/// `ditmoe train` on [`tiny`] with `from` replaced by `to` (and `extra` appended).
fn train_with(dir: &Path, from: &str, to: &str, extra: &str, flags: &[&str]) -> Output {
    let tiny = tiny();
    assert!(tiny.contains(from), "{from}");
    let config = dir.join(format!("c{}.toml", rand_suffix()));
    std::fs::write(&config, tiny.replacen(from, to, 1) + extra).unwrap();
    train(&config, &dir.join("run"), flags)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn bad_training_configs_name_the_field() {
    let dir = temp_dir("train");
    let model_line = "num_classes = 10";
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "hidden_size = 16",
            "hidden_size = 16\nmlp_ration = 3",
            &["unknown field `mlp_ration`", "line 14"],
        ),
        ("hidden_size = 16", "", &["missing field `hidden_size`"]),
        (
            "\"token_choice\"",
            "\"token_choise\"",
            &["unknown variant `token_choise`", "line 18"],
        ),
        (
            "top_k = 2",
            "top_k = 2, group = \"batch\"",
            &["unknown field `group`"],
        ),
        (
            "kind = \"flow\"",
            "kind = \"flow\", steps = 3",
            &["unknown field `steps`"],
        ),
        (
            model_line,
            "num_classes = 10\nnum_experts = 4\nnum_experts_per_tok = 9",
            &["model.num_experts: only reference config.json", "moe = {"],
        ),
        (
            model_line,
            "num_classes = 10\nmoe_placement = \"every_other\"",
            &[
                "model.moe_placement: expected a placement",
                "every_other with depth 1",
            ],
        ),
        (
            model_line,
            "num_classes = 7",
            &["model.num_classes: expected num_classes = 10"],
        ),
        (
            "lr = 1e-3",
            "lr = 1e-3\nwarmup_steps = 2",
            &["warmup_steps: expected warmup_steps <= steps (1), found 2"],
        ),
        (
            "lr = 1e-3",
            "lr = 1e-3\nadamw = { betas = [0.9, 0.99, 0.5] }",
            &["invalid length 3, expected betas = [β1, β2], two numbers"],
        ),
        (
            "kind = \"flow\", time_scale = 1000.0",
            "kind = \"ddpm\", steps = 1, schedule = \"cosine\"",
            &["objective.steps: expected 2 <= steps <= 100000, found 1"],
        ),
        (
            model_line,
            "num_classes = 10\nmlp_ratio = inf",
            &["model.mlp_ratio: expected mlp_ratio > 0 and finite, found inf"],
        ),
        (
            "input_size = 8",
            "input_size = 2147483648",
            &["model.input_size: expected input_size <= 4096, found 2147483648"],
        ),
        (
            "hidden_size = 16",
            "hidden_size = 1000000000",
            &["model.hidden_size: expected hidden_size <= 32768"],
        ),
        (
            "hidden_size = 16",
            "hidden_size = 100000",
            &["model.hidden_size"],
        ),
        (
            "depth = 1",
            "depth = 1000000",
            &["model.depth: expected depth <= 1024"],
        ),
        (
            "num_experts = 4",
            "num_experts = 1000000",
            &["model.moe.num_experts: expected num_experts <= 4096"],
        ),
        (
            "expert_hidden = 16",
            "expert_hidden = 1000000000",
            &["model.moe.expert_hidden: expected expert_hidden <= 1048576"],
        ),
        (
            "expert_hidden = 16",
            "expert_hidden = 0",
            &["model.moe.expert_hidden: expected expert_hidden > 0, found 0"],
        ),
        (
            "top_k = 2",
            "top_k = 5",
            &["model.moe.routing.top_k", "top_k = 5"],
        ),
        (
            "size = 8",
            "size = 4096",
            &["data.size: expected 4 <= size <= 1024, found 4096"],
        ),
        (
            "count = 100",
            "count = 0",
            &["data.count: expected count > 0"],
        ),
        (
            "kind = \"flow\", time_scale = 1000.0",
            "kind = \"ddpm\", steps = 0",
            &["objective.steps: expected 21 <= steps <= 100000, found 0"],
        ),
        (
            "time_scale = 1000.0",
            "time_scale = nan",
            &["objective.time_scale: expected time_scale > 0 and finite, found NaN"],
        ),
        (
            "lr = 1e-3",
            "lr = inf",
            &["lr: expected lr > 0 and finite, found inf"],
        ),
        (
            "lr = 1e-3",
            "lr = 50.0",
            &["lr: expected lr <= 1, found 50"],
        ),
        (
            "batch_size = 2",
            "batch_size = 0",
            &["batch_size: expected batch_size > 0, found 0"],
        ),
        (
            "log_every = 1",
            "log_every = 1\nema_decay = 1.0",
            &["ema_decay: expected 0 <= ema_decay < 1, found 1"],
        ),
        (
            "log_every = 1",
            "log_every = 1\ngrad_clip = -inf",
            &["grad_clip: expected grad_clip >= 0 and finite"],
        ),
        (
            "log_every = 1",
            "log_every = 1\nadamw = { betas = [0.9, 1.5] }",
            &["adamw.betas[1]: expected 0 <= betas[1] < 1, found 1.5"],
        ),
        (
            "log_every = 1",
            "log_every = 1\nadamw = { eps = 0.0 }",
            &["adamw.eps: expected eps > 0 and finite, found 0"],
        ),
        (
            "log_every = 1",
            "log_every = 1\nadamw = { weight_decay = nan }",
            &["adamw.weight_decay"],
        ),
        (
            "log_every = 1",
            "log_every = 1\nadamw = { epsilon = 1e-8 }",
            &["unknown field `epsilon`"],
        ),
        (
            "log_every = 1",
            "log_every = 1\nlr_decay = { cosine = { min_lr = 1.0 } }",
            &["lr_decay.cosine.min_lr: expected 0 <= min_lr <= 0.001, found 1"],
        ),
    ];
    for (from, to, needles) in cases {
        assert_refused(&train_with(&dir, from, to, "", &[]), needles);
    }
    let sample_cases: &[(&str, &[&str])] = &[
        (
            "[sample]\ncfg_scale = 1e9",
            &["sample.cfg_scale: expected 0 <= cfg_scale <= 20, found 1000000000"],
        ),
        (
            "[sample]\ncfg_scale = nan",
            &["sample.cfg_scale", "found NaN"],
        ),
        (
            "[sample]\nsteps = 0",
            &["sample.steps: expected steps > 0, found 0"],
        ),
        ("[sample]\nstepz = 3", &["unknown field `stepz`"]),
        (
            "[sample]\nsampler = { kind = \"ddim\", eta = 0.0 }",
            &["sample.sampler: a flow model samples with euler, not ddim"],
        ),
        (
            "[sample]\nsampler = { kind = \"euler\", eta = 0.0 }",
            &["unknown field `eta`"],
        ),
    ];
    for (extra, needles) in sample_cases {
        assert_refused(
            &train_with(&dir, "steps = 1", "steps = 1", extra, &[]),
            needles,
        );
    }
    let ddpm = "kind = \"ddpm\", steps = 100";
    let ddpm_cases: &[(&str, &[&str])] = &[
        (
            "[sample]\nsampler = { kind = \"ddim\", eta = 2.0 }",
            &["sample.sampler.eta: expected 0 <= eta <= 1, found 2"],
        ),
        (
            "[sample]\nsteps = 200",
            &["sample.steps: expected steps <= 100, found 200"],
        ),
        (
            "[sample]\nsampler = { kind = \"euler\" }",
            &["sample.sampler: a DDPM model samples with ddpm or ddim"],
        ),
    ];
    for (extra, needles) in ddpm_cases {
        let out = train_with(
            &dir,
            "kind = \"flow\", time_scale = 1000.0",
            ddpm,
            extra,
            &[],
        );
        assert_refused(&out, needles);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sizes_beyond_memory_or_any_tensor_are_refused() {
    let dir = temp_dir("memory");
    // 12·D²·depth ≈ 2·10¹¹ parameters: terabytes of training state on any machine of today.
    let huge = "hidden_size = 16384\ndepth = 64\nnum_heads = 16\n";
    let out = train_with(
        &dir,
        "hidden_size = 16\ndepth = 1\nnum_heads = 2\n",
        huge,
        "",
        &[],
    );
    if ditmoe_nn::accounting::machine_memory().is_some() {
        assert_refused(
            &out,
            &[
                "model + training state (batch 2) need an estimated",
                "this machine has",
                "--ignore-memory-limit",
            ],
        );
    }
    // A 1024² image at patch 1 is 2²⁰ tokens: its attention matrices alone exceed 2⁴⁰
    // elements, which no flag lets through.
    let big_image = tiny()
        .replace("size = 8, count = 100", "size = 1024, count = 100")
        .replace(
            "input_size = 8\npatch_size = 2",
            "input_size = 1024\npatch_size = 1",
        );
    let config = dir.join("big.toml");
    std::fs::write(&config, big_image).unwrap();
    let out = ditmoe(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--ignore-memory-limit",
    ]);
    assert_refused(&out, &["more than the 2^40 any tensor may have"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A quick ablation preset with `from` replaced by `to`, refused before training starts.
fn ablate_with(dir: &Path, from: &str, to: &str) -> Output {
    let quick = include_str!("../ablations/quick.toml");
    assert!(quick.contains(from), "{from}");
    let preset = dir.join(format!("p{}.toml", rand_suffix()));
    std::fs::write(&preset, quick.replacen(from, to, 1)).unwrap();
    let out = dir.join("out");
    ditmoe(&[
        "ablate",
        "--preset",
        preset.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn bad_ablation_presets_name_the_field() {
    let dir = temp_dir("ablate");
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "timestep_bins = 5",
            "timestep_bins = 1000000",
            &["evaluation.timestep_bins: expected timestep_bins <= 100, found 1000000"],
        ),
        (
            "samples_per_class = 10",
            "samples_per_class = 1000000000",
            &["evaluation.samples_per_class"],
        ),
        (
            "sample_steps = 20",
            "sample_steps = 0",
            &["evaluation.sample_steps: expected sample_steps > 0"],
        ),
        (
            "real_images = 1000",
            "real_images = 1",
            &["evaluation.real_images: expected 2 <= real_images <= 1000000, found 1"],
        ),
        (
            "specialization_images = 40",
            "specialization_images = 100000000",
            &["evaluation.specialization_images"],
        ),
        (
            "top_k_sweep = [1, 2, 4]",
            "top_k_sweep = [1, 0]",
            &["evaluation.top_k_sweep[1]: expected top_k_sweep[1] > 0, found 0"],
        ),
        (
            "top_k_sweep = [1, 2, 4]",
            "top_k_sweep = [1, 99]",
            &["evaluation.top_k_sweep[1]: expected top_k_sweep[1] <= 8"],
        ),
        (
            "capacity_sweep = [1.0, 2.0, 4.0]",
            "capacity_sweep = [nan]",
            &["evaluation.capacity_sweep[0]"],
        ),
        (
            "lr = 2e-3 }",
            "lr = inf }",
            &["evaluation.classifier.lr: expected lr > 0 and finite, found inf"],
        ),
        (
            "features = 32",
            "features = 100000",
            &["evaluation.classifier.features: expected features <= 1024"],
        ),
        (
            "steps = 400",
            "steps = 400, dropout = 0.5",
            &["unknown field `dropout`"],
        ),
        (
            "ema_decay = 0.98",
            "ema_decay = 1.5",
            &["train.ema_decay: expected 0 <= ema_decay < 1, found 1.5"],
        ),
        (
            "hidden_size = 96",
            "hidden_size = 96\nhiden = 3",
            &["unknown field `hiden`"],
        ),
        (
            "routing = { kind = \"token_choice\", top_k = 2, balance_loss_alpha = 0.01 } }",
            "routing = { kind = \"token_choice\", top_k = 2, balance_loss_alpha = inf } }",
            &["variant `tc`: variant[2].moe.routing.balance_loss_alpha"],
        ),
        (
            "capacity_factor = 2.0, group = \"per_image\"",
            "capacity_factor = 2.0, group = \"per_imag\"",
            &["unknown variant `per_imag`"],
        ),
    ];
    for (from, to, needles) in cases {
        assert_refused(&ablate_with(&dir, from, to), needles);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A checkpoint of [`tiny`] without a `[sample]` table, trained for one step (once per test run).
fn tiny_checkpoint() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = temp_dir("checkpoint");
        let out = train_with(&dir, "steps = 1", "steps = 1", "", &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        dir.join("run").join("checkpoint")
    })
}

/// `ditmoe sample` of 10 images in `steps` steps from `checkpoint` into `grid`, which succeeds.
fn sample_10(checkpoint: &Path, steps: &str, grid: &Path) {
    let out = ditmoe(&[
        "sample",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--n",
        "10",
        "--steps",
        steps,
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_flow_config_without_a_sample_table_samples_with_euler() {
    let checkpoint = tiny_checkpoint();
    let state = std::fs::read_to_string(checkpoint.join("state.json")).unwrap();
    assert!(!state.contains("\"sampler\""), "{state}");
    let grid = checkpoint.parent().unwrap().join("grid.png");
    sample_10(checkpoint, "2", &grid);
    // A state.json written before the sampler was optional (a full [sample] table) still reads.
    let mut old: serde_json::Value = serde_json::from_str(&state).unwrap();
    old["config"]["sample"]["sampler"] = serde_json::json!({ "kind": "euler" });
    let dir = temp_dir("old-state");
    for file in ["ema.safetensors", "model.safetensors"] {
        std::fs::copy(checkpoint.join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("state.json"), old.to_string()).unwrap();
    sample_10(&dir, "1", &grid);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_sample_flags_are_refused_before_loading() {
    let checkpoint = tiny_checkpoint().to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--n", "18446744073709551615"],
            &["--n: expected --n <= 65536, found 18446744073709551615"],
        ),
        (&["--n", "100000000000"], &["--n: expected --n <= 65536"]),
        (&["--n", "0"], &["--n: expected --n > 0, found 0"]),
        (
            &["--steps", "0"],
            &["--steps: expected --steps > 0, found 0"],
        ),
        (
            &["--steps", "100000"],
            &["--steps: expected --steps <= 10000"],
        ),
        (
            &["--cfg", "NaN"],
            &["--cfg: expected 0 <= --cfg <= 20, found NaN"],
        ),
        (&["--cfg", "inf"], &["--cfg"]),
        (
            &["--cfg=-3"],
            &["--cfg: expected 0 <= --cfg <= 20, found -3"],
        ),
        (
            &["--sampler", "ddim"],
            &["--sampler: a flow model samples with euler, not ddim"],
        ),
        (&["--sampler", "heun"], &["unknown sampler `heun`"]),
    ];
    for (flags, needles) in cases {
        let mut args = vec![
            "sample",
            "--checkpoint",
            checkpoint,
            "--out",
            "/nonexistent/grid.png",
        ];
        args.extend(flags.iter());
        assert_refused(&ditmoe(&args), needles);
    }
}

#[test]
fn zoo_refuses_an_image_size_no_preset_can_take() {
    for size in ["0", "2147483648"] {
        assert_refused(
            &ditmoe(&["zoo", "--image-size", size]),
            &["--image-size", "model.input_size"],
        );
    }
}

/// A change to a checkpoint's config JSON.
type Tamper = fn(&mut serde_json::Value);

/// The fixture's weights with its config JSON changed by `tamper`, written into `dir`.
fn tampered(dir: &Path, model: &str, tamper: Tamper) -> PathBuf {
    let file = read_tensors(fixture(model, "weights.safetensors")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&file.metadata["config"]).unwrap();
    tamper(&mut config);
    let mut metadata = file.metadata.clone();
    metadata.insert("config".into(), config.to_string());
    let path = dir.join(format!("w{}.safetensors", rand_suffix()));
    write_tensors(&path, &file.tensors, metadata).unwrap();
    path
}

fn forward(checkpoint: &Path, inputs: &Path, dir: &Path) -> Output {
    let out = dir.join("out.safetensors");
    ditmoe(&[
        "forward",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn tampered_checkpoint_configs_are_refused_naming_the_file() {
    let dir = temp_dir("tampered");
    let inputs = fixture("dit-dense", "inputs.safetensors");
    let cases: [(&str, Tamper, &str); 5] = [
        (
            "dit-dense",
            |c| c["input_size"] = (1u64 << 31).into(),
            "model.input_size: expected input_size <= 4096",
        ),
        (
            "dit-dense",
            |c| c["hidden_size"] = 1_000_000_000.into(),
            "model.hidden_size",
        ),
        (
            "dit-dense",
            |c| c["mlp_ration"] = 4.into(),
            "unknown field `mlp_ration`",
        ),
        (
            "ditmoe-token-choice",
            |c| c["num_experts"] = 1_000_000.into(),
            "model.moe.num_experts",
        ),
        (
            "dit-dense",
            |c| {
                c["moe"] = serde_json::json!({
                    "num_experts": 4,
                    "expert_hidden": i64::MAX,
                    "routing": { "kind": "token_choice", "top_k": 2 }
                })
            },
            "model.moe.expert_hidden: expected expert_hidden <= 1048576, found 9223372036854775807",
        ),
    ];
    for (model, tamper, needle) in cases {
        let weights = tampered(&dir, model, tamper);
        let name = weights.display().to_string();
        assert_refused(
            &forward(&weights, &inputs, &dir),
            &[&name, "bad model config", needle],
        );
    }

    // `sample` reads two configs: state.json's and the weights'.
    let checkpoint = tiny_checkpoint();
    let copy = dir.join("checkpoint");
    std::fs::create_dir_all(&copy).unwrap();
    for file in ["ema.safetensors", "model.safetensors", "state.json"] {
        std::fs::copy(checkpoint.join(file), copy.join(file)).unwrap();
    }
    let sample = || {
        ditmoe(&[
            "sample",
            "--checkpoint",
            copy.to_str().unwrap(),
            "--n",
            "10",
            "--out",
            dir.join("grid.png").to_str().unwrap(),
        ])
    };
    let ema = copy.join("ema.safetensors");
    let file = read_tensors(&ema).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&file.metadata["config"]).unwrap();
    config["input_size"] = (1u64 << 31).into();
    let mut metadata = file.metadata.clone();
    metadata.insert("config".into(), config.to_string());
    write_tensors(&ema, &file.tensors, metadata).unwrap();
    let ema_name = ema.display().to_string();
    assert_refused(
        &sample(),
        &[&ema_name, "model.input_size: expected input_size <= 4096"],
    );

    let state_path = copy.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["config"]["model"]["hidden_size"] = 1_000_000_000.into();
    std::fs::write(&state_path, state.to_string()).unwrap();
    let state_name = state_path.display().to_string();
    assert_refused(
        &sample(),
        &[
            &state_name,
            "model.hidden_size: expected hidden_size <= 32768",
        ],
    );
    state["config"]["model"]["hidden_size"] = 16.into();
    state["config"]["objective"] = serde_json::json!({ "kind": "ddpm", "steps": 0 });
    std::fs::write(&state_path, state.to_string()).unwrap();
    assert_refused(&sample(), &[&state_name, "objective.steps"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn forward_inputs_are_checked_against_the_model() {
    let dir = temp_dir("forward");
    let weights = fixture("dit-dense", "weights.safetensors");
    let good = read_tensors(fixture("dit-dense", "inputs.safetensors"))
        .unwrap()
        .tensors;
    let n = good["y"].shape()[0];
    let with = |name: &str, tensor: Tensor| {
        let mut tensors = good.clone();
        tensors.insert(name.to_string(), tensor);
        let path = dir.join(format!("in{}.safetensors", rand_suffix()));
        write_tensors(&path, &tensors, Default::default()).unwrap();
        path
    };
    let labels = |bad: i64| {
        let mut y = vec![0i64; n];
        y[n - 1] = bad;
        Tensor::from_vec(y, &[n]).unwrap()
    };
    // Label 10 is the null label of guidance (the fixture has class dropout): accepted.
    let out = forward(&weights, &with("y", labels(10)), &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    for bad in [11, -1, i64::MAX] {
        let found = format!("found {bad} at index {}", n - 1);
        let out = forward(&weights, &with("y", labels(bad)), &dir);
        assert_refused(
            &out,
            &[
                "input `y` is out of range: expected labels in 0..=10",
                &found,
            ],
        );
    }
    let x = good["x"].narrow(1, 0, 3).unwrap().contiguous();
    let out = forward(&weights, &with("x", x), &dir);
    assert_refused(
        &out,
        &["input `x`: expected shape [N, 4, 16, 16] with N >= 1"],
    );
    let expected_x = "input `x`: expected shape [N, 4, 16, 16] with N >= 1 (the model takes 4 channels of 16×16), found";
    for shape in [vec![0, 4, 16, 16], vec![]] {
        let x = Tensor::from_vec(vec![0.0f32; shape.iter().product()], &shape).unwrap();
        let found = format!("{expected_x} {shape:?}");
        assert_refused(&forward(&weights, &with("x", x), &dir), &[&found]);
    }
    for y in [vec![1.7f32; n], vec![f32::NAN; n], vec![1e30f32; n]] {
        let y = Tensor::from_vec(y, &[n]).unwrap();
        assert_refused(
            &forward(&weights, &with("y", y), &dir),
            &["input `y`: expected integer class labels (dtype I64), found dtype F32"],
        );
    }
    let t = Tensor::from_vec(vec![f32::NAN; n], &[n]).unwrap();
    assert_refused(
        &forward(&weights, &with("t", t), &dir),
        &["input `t`: expected finite"],
    );
    let t = Tensor::from_vec(vec![1.0f32; n + 1], &[n + 1]).unwrap();
    let expected = format!("input `t`: expected shape [{n}]");
    assert_refused(&forward(&weights, &with("t", t), &dir), &[&expected]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `ditmoe ARGS` with stdout on `/dev/full`, where every write fails.
fn ditmoe_into_full_disk(args: &[&str]) -> Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_ditmoe"))
        .args(args)
        .stdout(full)
        .output()
        .unwrap()
}

#[test]
fn help_and_usage_errors_keep_their_exit_codes_and_a_failed_write_exits_1() {
    for args in [&["--help"][..], &["--version"], &["train", "--help"]] {
        let out = ditmoe(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
        assert_eq!(
            ditmoe_into_full_disk(args).status.code(),
            Some(1),
            "{args:?}"
        );
    }
    let out = ditmoe(&["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unexpected argument '--bogus'"), "{stderr}");
}
