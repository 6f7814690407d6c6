//! The `ditmoe` binary end to end: `zoo` numbers and the `forward` parity bridge on the
//! PyTorch fixtures.

mod common;

use common::{ditmoe, fixture, scratch, stderr, tiny_config, train};
use ditmoe_nn::checkpoint::read_tensors;
use std::process::Command;

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
    let dir = scratch("cli");
    for model in ["dit-dense", "ditmoe-token-choice", "diffmoe"] {
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
        assert!(out.status.success(), "{}", stderr(&out));
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
        // DiffMoE's eval counts: how many tokens each expert took in blocks 1 and 3.
        for (name, counts) in reference.iter().filter(|(k, _)| k.starts_with("count.")) {
            let block = name.trim_start_matches("count.");
            let ours = &ours[&format!("expert_counts.blocks.{block}")];
            assert_eq!(ours.to_vec_f64(), counts.to_vec_f64(), "{model}: {name}");
        }
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
        stderr.contains("not a built-in preset (quick, full, routing)")
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
    let dir = scratch("e2e");
    let config = dir.join("mini.toml");
    let expert_choice = r#"{ kind = "expert_choice", capacity_factor = 2.0 }"#;
    let sample = "[sample]\nsampler = { kind = \"euler\" }\nsteps = 3\ncfg_scale = 2.0\n";
    std::fs::write(&config, tiny_config(4, 4, 2, expert_choice) + sample).unwrap();
    let run = dir.join("run");
    let out = train(&config, &run, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
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
    assert!(out.status.success(), "{}", stderr(&out));
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
