//! The `ditmoe` binary end to end: `zoo` numbers and the `forward` parity bridge on the
//! PyTorch fixtures.

use ditmoe_nn::checkpoint::read_tensors;
use std::path::PathBuf;
use std::process::Command;

fn ditmoe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ditmoe"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn fixture(model: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../nn/tests/fixtures")
        .join(model)
        .join(file)
}

#[test]
fn zoo_json_lists_the_dit_acceptance_numbers() {
    let out = ditmoe(&["zoo", "--json"]);
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "DiT-XL/4")
        .unwrap();
    assert_eq!(row["params_total"], 675_000_704u64);
    assert!((row["gmacs"].as_f64().unwrap() - 29.04).abs() < 0.005);
    for row in rows.as_array().unwrap() {
        assert!(row["params_activated"].as_u64().unwrap() <= row["params_total"].as_u64().unwrap());
    }
}

#[test]
fn forward_reproduces_the_reference_outputs() {
    let dir = std::env::temp_dir().join(format!("ditmoe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for model in ["dit-dense", "ditmoe-token-choice"] {
        let out_path = dir.join(format!("{model}.safetensors"));
        let out = ditmoe(&[
            "forward",
            "--checkpoint",
            fixture(model, "weights.safetensors").to_str().unwrap(),
            "--inputs",
            fixture(model, "inputs.safetensors").to_str().unwrap(),
            "--out",
            out_path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = read_tensors(&out_path).unwrap().tensors;
        let reference = read_tensors(fixture(model, "eval.safetensors"))
            .unwrap()
            .tensors;
        let (a, b) = (ours["out"].to_vec_f64(), reference["out"].to_vec_f64());
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt()
            / b.iter().map(|y| y * y).sum::<f64>().sqrt();
        assert!(err < 1e-5, "{model}: {err}");
        let routers = ours
            .keys()
            .filter(|k| k.starts_with("router_probs.blocks."))
            .count();
        assert_eq!(routers, if model == "dit-dense" { 0 } else { 2 });
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn errors_name_the_problem() {
    let out = ditmoe(&[
        "forward",
        "--checkpoint",
        "/nonexistent/w.safetensors",
        "--inputs",
        "x",
        "--out",
        "y",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/w.safetensors"));
    let out = ditmoe(&["ablate", "--preset", "/nonexistent/preset.toml"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a built-in preset (quick, full)")
            && stderr.contains("/nonexistent/preset.toml"),
        "{stderr}"
    );
    let out = ditmoe(&["train", "--preset", "tiny-moe", "--device", "gpu"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expected cpu, cuda or cuda:N"), "{stderr}");
    if let ditmoe_cuda::DriverStatus::Missing(_) = ditmoe_cuda::driver_status() {
        let out = Command::new(env!("CARGO_BIN_EXE_ditmoe"))
            .args([
                "train", "--preset", "tiny-moe", "--device", "cuda", "--steps", "1",
            ])
            .env_remove(ditmoe_cuda::registry::EMULATOR_ENV)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no NVIDIA driver found") && stderr.contains("DITMOE_CUDA_EMULATOR=1"),
            "{stderr}"
        );
    }
}

#[test]
fn train_then_sample_end_to_end() {
    let dir = std::env::temp_dir().join(format!("ditmoe-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mini.toml");
    std::fs::write(
        &config,
        r#"
        steps = 4
        batch_size = 4
        lr = 1e-3
        checkpoint_every = 2
        log_every = 2
        objective = { kind = "flow", time_scale = 1000.0 }
        data = { kind = "shapes", size = 8, count = 100 }
        [model]
        input_size = 8
        patch_size = 2
        in_channels = 3
        hidden_size = 16
        depth = 1
        num_heads = 2
        num_classes = 10
        learn_sigma = false
        moe = { num_experts = 4, expert_hidden = 16, routing = { kind = "expert_choice", capacity_factor = 2.0 } }
        [sample]
        sampler = { kind = "euler" }
        steps = 3
        cfg_scale = 2.0
        "#,
    )
    .unwrap();
    let run = dir.join("run");
    let out = ditmoe(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("trained 4 steps"));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 4);
    let routing = last["routing"].as_array().unwrap();
    assert_eq!(routing.len(), 1, "one MoE layer's routing");
    let load: f64 = routing[0]["load"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_f64().unwrap())
        .sum();
    assert!((load - 1.0).abs() < 1e-9, "loads are fractions: {load}");

    let grid = dir.join("grid.png");
    let checkpoint = run.join("checkpoint");
    let out = ditmoe(&[
        "sample",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--n",
        "20",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&grid).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let out = ditmoe(&[
        "sample",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--sampler",
        "ddim",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("a flow model samples with euler"));
    let out = ditmoe(&["train", "--preset", "tiny-nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown preset `tiny-nope`"));
    std::fs::remove_dir_all(dir).unwrap();
}
