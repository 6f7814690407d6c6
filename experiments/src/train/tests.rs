//! End-to-end runs of the training loop: resume, GPU against CPU, profiling, refusals.

use super::*;
use ditmoe_nn::checkpoint::read_tensors;
use ditmoe_tensor::compare::max_abs_difference;
use ditmoe_tensor::Tensor;
use std::collections::BTreeMap;

/// A model small enough to train a few steps in a test.
fn tiny_config() -> TrainConfig {
    let text = r#"
        steps = 6
        batch_size = 4
        lr = 1e-3
        warmup_steps = 2
        lr_decay = { cosine = { min_lr = 1e-4 } }
        checkpoint_every = 3
        log_every = 2
        objective = { kind = "ddpm", steps = 100 }
        data = { kind = "shapes", size = 8, count = 100 }
        [model]
        input_size = 8
        patch_size = 4
        in_channels = 3
        hidden_size = 16
        depth = 2
        num_heads = 2
        num_classes = 10
        moe = { num_experts = 4, expert_hidden = 16, shared_expert_hidden = 8, routing = { kind = "token_choice", top_k = 2 } }
    "#;
    TrainConfig::from_toml(text, "test").unwrap()
}

fn quiet() -> TrainOptions {
    TrainOptions::new(Progress::Quiet)
}
fn stop_after(step: u64) -> TrainOptions {
    TrainOptions {
        stop_after: Some(step),
        ..quiet()
    }
}
fn resume() -> TrainOptions {
    TrainOptions {
        resume: true,
        ..quiet()
    }
}

/// The tiny config and its run in a fresh folder `name`, stopped after step 3.
fn stopped_after_3(name: &str) -> (TrainConfig, PathBuf) {
    let config = tiny_config();
    let dir = temp(name);
    train(&config, &dir, &stop_after(3)).unwrap();
    (config, dir)
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ditmoe-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn resuming_gives_the_same_weights_as_an_uninterrupted_run() {
    let config = tiny_config();
    let (whole, split) = (temp("whole"), temp("split"));
    train(&config, &whole, &quiet()).unwrap();
    train(&config, &split, &stop_after(3)).unwrap();
    // An interruption after logging step 4 but before checkpointing it: the resumed run
    // logs step 4 again, so the stale line must go.
    let metrics = split.join("metrics.jsonl");
    let mut stale = read_metrics(&metrics).unwrap().pop().unwrap();
    stale.step = 4;
    let text = std::fs::read_to_string(&metrics).unwrap();
    std::fs::write(
        &metrics,
        text + &serde_json::to_string(&stale).unwrap() + "\n",
    )
    .unwrap();
    let summary = train(&config, &split, &resume()).unwrap();
    assert_eq!(summary.steps, 3);
    for file in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        let a = read_tensors(whole.join("checkpoint").join(file))
            .unwrap()
            .tensors;
        let b = read_tensors(split.join("checkpoint").join(file))
            .unwrap()
            .tensors;
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, t) in &a {
            assert_eq!(t.to_vec_f64(), b[name].to_vec_f64(), "{file}: {name}");
        }
    }
    let lines = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![2, 4, 6], "metrics continue across the resume");
    for dir in [whole, split] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn training_on_the_gpu_follows_the_cpu_run() {
    // cuda:0 is the real GPU when the driver has one, else the PTX emulator; exact f32
    // products (tensor cores off) so the two runs agree to f32 rounding.
    ditmoe_cuda::registry::device_or_emulator(0);
    let _exact =
        ditmoe_cuda::precision::set(ditmoe_cuda::precision::current().with_tensor_cores(false));
    let on_gpu = TrainOptions {
        device: Device::Cuda(0),
        ..quiet()
    };
    let mut config = tiny_config();
    config.steps = 2;
    config.log_every = 1;
    // DDPM with the learned-variance bound, then rectified flow.
    for objective in [config.objective, Objective::Flow { time_scale: 1000.0 }] {
        config.objective = objective;
        let (cpu, gpu) = (temp("cpu"), temp("gpu"));
        train(&config, &cpu, &quiet()).unwrap();
        train(&config, &gpu, &on_gpu).unwrap();
        let (a, b) = (
            read_metrics(&cpu.join("metrics.jsonl")).unwrap(),
            read_metrics(&gpu.join("metrics.jsonl")).unwrap(),
        );
        assert_eq!(a.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            let what = format!("{:?}: loss {} vs {}", config.objective, x.loss, y.loss);
            assert!((x.loss - y.loss).abs() <= 1e-4 * x.loss.abs(), "{what}");
            assert!(
                (x.grad_norm - y.grad_norm).abs() <= 1e-3 * x.grad_norm,
                "{what}"
            );
        }
        // The checkpoint was written from the GPU run and holds the same weights.
        let file = |dir: &Path| read_tensors(dir.join("checkpoint/model.safetensors")).unwrap();
        let (wa, wb) = (file(&cpu).tensors, file(&gpu).tensors);
        for (name, t) in &wa {
            let (x, y) = (t.to_vec_f64(), wb[name].to_vec_f64());
            let diff = max_abs_difference(&x, &y);
            assert!(diff < 1e-4, "{name}: weights differ by {diff}");
        }
        for dir in [cpu, gpu] {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}

#[test]
fn a_training_step_on_the_gpu_waits_for_it_once() {
    // Traffic is counted per thread, so these counts are this test's alone; mixed
    // precision, so the MoE layers run their grouped kernels with device-side schedules.
    ditmoe_cuda::registry::device_or_emulator(0);
    let _mixed =
        ditmoe_cuda::precision::set(ditmoe_cuda::precision::current().with_tensor_cores(true));
    let mut config = tiny_config();
    config.log_every = 100; // no routing records to download
    let downloads = |steps: u64| {
        let options = TrainOptions {
            device: Device::Cuda(0),
            ..stop_after(steps)
        };
        let dir = temp(&format!("one-wait-{steps}"));
        let before = ditmoe_cuda::traffic::this_thread();
        train(&config, &dir, &options).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        (ditmoe_cuda::traffic::this_thread() - before).downloads
    };
    // Two more steps, the same checkpoint at the end: two more downloads, the losses and
    // the gradient norm of each step together.
    assert_eq!(downloads(3) - downloads(1), 2);
}

#[test]
fn sampling_on_the_gpu_gives_the_cpu_images() {
    use crate::generate::{generate, Generation};
    use ditmoe_diffusion::SamplerKind;
    ditmoe_cuda::registry::device_or_emulator(0);
    let _exact =
        ditmoe_cuda::precision::set(ditmoe_cuda::precision::current().with_tensor_cores(false));
    let mut config = tiny_config();
    config.steps = 1;
    let dir = temp("sample-gpu");
    train(&config, &dir, &quiet()).unwrap();
    let (model, config) = load_for_sampling(&dir.join("checkpoint")).unwrap();
    let images = |device| {
        let generation = Generation {
            sampler: SamplerKind::Ddim { eta: 0.0 },
            steps: 2,
            cfg_scale: 2.0,
            seed: 5,
            device,
        };
        generate(&model, &config, &[0, 3, 7], &generation).unwrap()
    };
    let on_gpu = images(Device::Cuda(0));
    assert_eq!(on_gpu.device(), Device::Cpu, "images come back to the host");
    let on_cpu = images(Device::Cpu);
    let (a, b) = (on_cpu.to_vec_f64(), on_gpu.to_vec_f64());
    let diff = max_abs_difference(&a, &b);
    assert!(diff < 1e-4, "images differ by {diff}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_profiled_run_says_where_the_step_time_goes() {
    let options = TrainOptions {
        profile: true,
        ..stop_after(4)
    };
    let summary = train(&tiny_config(), &temp("profile"), &options).unwrap();
    let profile = summary.profile.expect("four steps were run with profiling");
    assert_eq!(
        profile.steps, 3,
        "the first step (kernel loading) is left out"
    );
    for section in [
        "attention",
        "routing",
        "experts",
        "shared expert",
        "optimizer",
        "data",
    ] {
        assert!(profile.share_of(section) > 0.0, "{section}: {profile:?}");
    }
    for section in ["attention", "routing", "experts"] {
        assert!(
            profile
                .rows
                .iter()
                .any(|r| r.section == section && r.pass == profile::Pass::Backward),
            "{section} has a backward row"
        );
    }
    let shares: f64 = profile.rows.iter().map(|r| r.share).sum();
    assert!((shares - 1.0).abs() < 1e-9);
    assert!(profile.kernels.is_empty(), "no GPU kernels on the CPU");
    assert!(train(&tiny_config(), &temp("unprofiled"), &stop_after(2))
        .unwrap()
        .profile
        .is_none());
}

#[test]
fn resume_needs_a_matching_checkpoint() {
    let config = tiny_config();
    let dir = temp("mismatch");
    assert!(train(&config, &dir, &resume())
        .unwrap_err()
        .to_string()
        .contains("no checkpoint"));
    train(&config, &dir, &stop_after(3)).unwrap();
    let mut other = config.clone();
    other.lr = 5e-4;
    assert!(train(&other, &dir, &resume())
        .unwrap_err()
        .to_string()
        .contains("different config"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_dataset_that_does_not_fit_the_model_is_refused() {
    let mut config = tiny_config();
    config.data = DataSpec::Idx {
        images: "/nonexistent/images".into(),
        labels: "/nonexistent/labels".into(),
    };
    let err = train(&config, &temp("data"), &quiet())
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/images"), "{err}");
}

/// The checkpoint tensors of a run directory, file by file.
fn checkpoint_tensors(dir: &Path) -> Vec<(String, Vec<f64>)> {
    let files = [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ];
    files
        .iter()
        .flat_map(|file| {
            read_tensors(checkpoint_dir(dir).unwrap().join(file))
                .unwrap()
                .tensors
                .into_iter()
                .map(move |(name, t)| (format!("{file}: {name}"), t.to_vec_f64()))
        })
        .collect()
}

/// The metrics lines of a log without their timing fields, which no two runs share.
fn untimed_metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
            for field in ["images_per_s", "elapsed_s", "peak_heap_mib"] {
                value.as_object_mut().unwrap().remove(field);
            }
            value
        })
        .collect()
}

#[test]
fn resuming_with_more_steps_extends_the_run_and_keeps_the_logged_bytes() {
    // Constant learning rate: the schedule does not depend on the planned total, so 4 steps
    // extended to 8 are 8 steps planned from the start.
    let mut config = tiny_config();
    config.lr_decay = ditmoe_nn::optim::LrDecay::Constant;
    config.steps = 8;
    let (whole, split) = (temp("extend-whole"), temp("extend-split"));
    train(&config, &whole, &quiet()).unwrap();
    let short = TrainConfig {
        steps: 4,
        ..config.clone()
    };
    train(&short, &split, &quiet()).unwrap();
    let metrics = split.join("metrics.jsonl");
    let logged = std::fs::read(&metrics).unwrap();
    // A kill mid-write leaves a torn line; the resumed run drops it.
    let mut torn = logged.clone();
    torn.extend_from_slice(br#"{"step":6,"loss":0.3"#);
    std::fs::write(&metrics, &torn).unwrap();
    let summary = train(&config, &split, &resume()).unwrap();
    assert_eq!(summary.steps, 4);
    assert_eq!(checkpoint_tensors(&whole), checkpoint_tensors(&split));
    let after = std::fs::read(&metrics).unwrap();
    assert_eq!(
        &after[..logged.len()],
        &logged[..],
        "logged bytes untouched"
    );
    assert_eq!(
        untimed_metrics(&metrics),
        untimed_metrics(&whole.join("metrics.jsonl"))
    );
    assert_eq!(
        read_state(&split.join("checkpoint")).unwrap().config,
        config
    );
    for dir in [whole, split] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn resume_refuses_fewer_steps_and_names_the_field_that_differs() {
    let (config, dir) = stopped_after_3("fewer");
    let fewer = TrainConfig {
        steps: 2,
        ..config.clone()
    };
    let err = train(&fewer, &dir, &resume()).unwrap_err().to_string();
    assert!(
        err.contains("at step 3") && err.contains("--steps 3 or more"),
        "{err}"
    );
    let mut other = config.clone();
    let crate::config::ModelSpec::Config(model) = &mut other.model else {
        unreachable!("the tiny config spells its model out")
    };
    model.hidden_size = 32;
    let err = train(&other, &dir, &resume()).unwrap_err().to_string();
    assert!(
        err.contains("`model.hidden_size`: 16 in the checkpoint, 32 now"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_fresh_run_refuses_a_directory_holding_a_run_unless_told_to_overwrite() {
    let (config, dir) = stopped_after_3("refuse");
    let before = checkpoint_tensors(&dir);
    let metrics = std::fs::read(dir.join("metrics.jsonl")).unwrap();
    let err = train(&config, &dir, &stop_after(2))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), metrics);
    assert_eq!(checkpoint_tensors(&dir), before);
    let overwrite = TrainOptions {
        overwrite: true,
        ..stop_after(2)
    };
    train(&config, &dir, &overwrite).unwrap();
    assert_eq!(read_state(&dir.join("checkpoint")).unwrap().step, 2);
    let steps: Vec<u64> = read_metrics(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|line| line.step)
        .collect();
    assert_eq!(steps, vec![2]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Copies the files of checkpoint directory `from` to `to`, leaving out `except`.
fn copy_checkpoint(from: &Path, to: &Path, except: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if !except.contains(&name) {
            std::fs::copy(&path, to.join(name)).unwrap();
        }
    }
}

/// A checkpoint directory set up by hand: its name, the checkpoint copied there, the files
/// left out.
type OnDisk<'a> = (&'a str, &'a Path, &'a [&'a str]);

#[test]
fn resume_finds_the_newest_complete_checkpoint_whatever_a_kill_left() {
    let config = tiny_config();
    let (source, at3, at6) = (temp("states"), temp("states-3"), temp("states-6"));
    train(&config, &source, &stop_after(3)).unwrap();
    copy_checkpoint(&source.join("checkpoint"), &at3, &[]);
    train(&config, &source, &resume()).unwrap();
    copy_checkpoint(&source.join("checkpoint"), &at6, &[]);
    let run = temp("states-run");
    let cases: [(&[OnDisk], Option<&str>); 5] = [
        // Killed while writing checkpoint-new (state.json comes last).
        (
            &[
                ("checkpoint", &at3, &[]),
                ("checkpoint-new", &at6, &["state.json"]),
            ],
            Some("checkpoint"),
        ),
        // Killed between the two renames.
        (
            &[("checkpoint-old", &at3, &[]), ("checkpoint-new", &at6, &[])],
            Some("checkpoint-new"),
        ),
        // Killed while removing checkpoint-old.
        (
            &[
                ("checkpoint", &at6, &[]),
                ("checkpoint-old", &at3, &["model.safetensors"]),
            ],
            Some("checkpoint"),
        ),
        // Killed between the renames, then again while the next save removed checkpoint-old.
        (
            &[
                ("checkpoint-new", &at3, &[]),
                ("checkpoint-old", &at6, &["state.json", "ema.safetensors"]),
            ],
            Some("checkpoint-new"),
        ),
        (
            &[("checkpoint-new", &at6, &["optimizer.safetensors"])],
            None,
        ),
    ];
    for (on_disk, picked) in cases {
        let _ = std::fs::remove_dir_all(&run);
        for (name, from, except) in on_disk {
            copy_checkpoint(from, &run.join(name), except);
        }
        assert_eq!(
            checkpoint_dir(&run),
            picked.map(|p| run.join(p)),
            "{on_disk:?}"
        );
        // `sample --checkpoint run/checkpoint` in the middle of a save reads the same one.
        assert_eq!(
            super::load_for_sampling(&run.join("checkpoint")).is_ok(),
            picked.is_some(),
            "{on_disk:?}"
        );
    }
    // The last state with a result: resuming continues from step 3, settles the directory on
    // one checkpoint and ends where the uninterrupted run did.
    let _ = std::fs::remove_dir_all(&run);
    copy_checkpoint(&at3, &run.join("checkpoint-new"), &[]);
    copy_checkpoint(&at6, &run.join("checkpoint-old"), &["state.json"]);
    std::fs::copy(source.join("metrics.jsonl"), run.join("metrics.jsonl")).unwrap();
    assert_eq!(train(&config, &run, &resume()).unwrap().steps, 3);
    let left: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("checkpoint"))
        .collect();
    assert_eq!(left, vec!["checkpoint"]);
    assert_eq!(checkpoint_tensors(&run), checkpoint_tensors(&source));
    for dir in [source, at3, at6, run] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_checkpoint_missing_a_moment_or_with_a_misshapen_ema_is_refused() {
    use ditmoe_nn::checkpoint::write_tensors;
    let (config, dir) = stopped_after_3("moments");
    let checkpoint = dir.join("checkpoint");
    // Rewrites one file of the checkpoint, changed by `edit`; returns the resume error.
    let resume_after = |file: &str, edit: &dyn Fn(&mut BTreeMap<String, Tensor>) -> String| {
        let path = checkpoint.join(file);
        let original = std::fs::read(&path).unwrap();
        let mut contents = read_tensors(&path).unwrap();
        let name = edit(&mut contents.tensors);
        write_tensors(&path, &contents.tensors, contents.metadata).unwrap();
        let err = format!("{:#}", train(&config, &dir, &resume()).unwrap_err());
        std::fs::write(&path, original).unwrap();
        (name, err)
    };
    let (name, err) = resume_after("optimizer.safetensors", &|tensors| {
        let key = tensors
            .keys()
            .find(|k| k.starts_with("v.") && !k.contains("experts"))
            .unwrap()
            .clone();
        tensors.remove(&key);
        key
    });
    assert!(
        err.contains("optimizer.safetensors") && err.contains(&format!("missing `{name}`")),
        "{err}"
    );
    let (name, err) = resume_after("ema.safetensors", &|tensors| {
        let key = tensors
            .iter()
            .find(|(k, t)| k.ends_with(".weight") && t.shape().len() == 2 && !k.contains("experts"))
            .unwrap()
            .0
            .clone();
        tensors.insert(
            key.clone(),
            Tensor::zeros(&[1, 1], ditmoe_tensor::DType::F32).unwrap(),
        );
        key
    });
    assert!(
        err.contains("ema.safetensors") && err.contains(&format!("EMA `{name}` has shape [1, 1]")),
        "{err}"
    );
    assert_eq!(
        train(&config, &dir, &resume()).unwrap().steps,
        3,
        "intact again"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// DDPM with one cosine step and a learned σ, which validation refuses: every t is 0, where
/// the posterior variance β̃_0 is 0, so the loss is finite but the gradient of the learned
/// log-variance (interpolating towards ln β̃_0 = −∞) is NaN.
fn one_step_cosine_ddpm() -> GaussianDiffusion {
    GaussianDiffusion::new(
        Schedule::new(ditmoe_diffusion::BetaSchedule::Cosine, 1),
        true,
    )
}

/// The error of training `config` into `out` with [`one_step_cosine_ddpm`].
fn run_one_step_cosine_ddpm(config: &TrainConfig, out: &Path, options: &TrainOptions) -> String {
    let model_config = config.model_config().unwrap();
    run(one_step_cosine_ddpm(), config, model_config, out, options)
        .unwrap_err()
        .to_string()
}

#[test]
fn a_non_finite_gradient_stops_the_run_before_its_update_and_checkpoint() {
    let mut config = tiny_config();
    (config.checkpoint_every, config.log_every) = (1, 1);
    let out = temp("non-finite");
    train(&config, &out, &stop_after(2)).unwrap();
    let good = checkpoint_tensors(&out);
    assert!(good.iter().all(|(_, t)| t.iter().all(|v| v.is_finite())));
    let err = run_one_step_cosine_ddpm(&config, &out, &resume());
    let expected = format!(
        "non-finite grad_norm (NaN) at step 3: stopping before its update; the last good checkpoint is {}",
        checkpoint_dir(&out).unwrap().display()
    );
    assert_eq!(err, expected);
    assert_eq!(checkpoint_tensors(&out), good);
    let logged = read_metrics(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(logged.iter().map(|l| l.step).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn a_run_that_fails_its_first_step_says_no_checkpoint_was_written() {
    let config = tiny_config();
    let out = temp("non-finite-first");
    let err = run_one_step_cosine_ddpm(&config, &out, &quiet());
    assert_eq!(
        err,
        "non-finite grad_norm (NaN) at step 1: stopping before its update; no checkpoint was written yet"
    );
    assert!(checkpoint_dir(&out).is_none());
    assert_eq!(read_metrics(&out.join("metrics.jsonl")).unwrap(), []);
}

#[test]
fn state_json_refuses_unknown_keys_and_reads_the_old_layout() {
    let dir = temp("state");
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::to_value(tiny_config()).unwrap();
    let write = |state: serde_json::Value| {
        std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
    };
    // The first versions wrote no `seconds`.
    write(serde_json::json!({ "step": 3, "config": config }));
    let old = read_state(&dir).unwrap();
    assert_eq!((old.step, old.seconds), (3, 0.0));
    write(serde_json::json!({ "step": 3, "config": config, "seconds": 1.5, "extra": 1 }));
    let err = format!("{:#}", read_state(&dir).err().unwrap());
    assert!(err.contains("unknown field `extra`"), "{err}");
}
