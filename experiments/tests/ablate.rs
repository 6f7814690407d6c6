//! `ditmoe ablate` end to end on a miniature preset: every file of the report exists and
//! parses, the report's numbers are the JSONL's, expert choice is exactly balanced, and a
//! second run skips the finished variants.

mod common;

use common::{ditmoe, scratch};
use std::path::Path;
use std::process::{Command, Output};

/// A preset small enough to train and evaluate nine variants in seconds.
const MINI: &str = r#"
description = "miniature ablation for the tests"

[train]
seed = 3
steps = 6
batch_size = 4
lr = 2e-3
warmup_steps = 2
checkpoint_every = 3
log_every = 2
objective = { kind = "flow", time_scale = 1000.0 }
data = { kind = "shapes", size = 8, count = 400 }
sample = { sampler = { kind = "euler" }, steps = 2, cfg_scale = 2.0 }

[train.model]
input_size = 8
patch_size = 2
in_channels = 3
hidden_size = 16
depth = 2
num_heads = 2
num_classes = 10
learn_sigma = false

[evaluation]
samples_per_class = 2
sample_steps = 2
real_images = 100
specialization_images = 4
timestep_bins = 2
classifier = { hidden = 16, features = 4, steps = 5, batch_size = 16, lr = 1e-3 }
top_k_sweep = [1, 2]
capacity_sweep = [1.0, 2.0]

[[variant]]
name = "dense"
about = "dense"

[[variant]]
name = "dense-iso"
about = "iso-FLOP dense"
iso_flop_with = "tc"

[[variant]]
name = "tc"
about = "token choice"
moe = { num_experts = 4, expert_hidden = 16, shared_expert_hidden = 8, routing = { kind = "token_choice", top_k = 2 } }

[[variant]]
name = "tc-no-balance"
about = "token choice, no balance loss"
moe = { num_experts = 4, expert_hidden = 16, shared_expert_hidden = 8, routing = { kind = "token_choice", top_k = 2, balance_loss_alpha = 0.0 } }

[[variant]]
name = "ec"
about = "expert choice"
moe = { num_experts = 4, expert_hidden = 16, routing = { kind = "expert_choice", capacity_factor = 2.0 } }

[[variant]]
name = "race"
about = "expert race"
moe = { num_experts = 4, expert_hidden = 16, routing = { kind = "expert_race", top_k = 2 } }

[[variant]]
name = "pool"
about = "global pool (DiffMoE)"
moe = { num_experts = 4, expert_hidden = 16, routing = { kind = "global_pool", capacity = 2.0 } }

[[variant]]
name = "relu"
about = "ReLU routing (ReMoE)"
moe = { num_experts = 4, expert_hidden = 16, routing = { kind = "relu", top_k = 2 } }

[[variant]]
name = "race-full"
about = "expert race, identity gates, learned threshold, two-layer router, similarity loss"
moe = { num_experts = 4, expert_hidden = 16, router = { kind = "two_layer" }, routing = { kind = "expert_race", top_k = 2, gate = "identity", similarity_loss_weight = 0.01, inference = { kind = "threshold" } } }
"#;

const VARIANTS: [&str; 9] = [
    "dense",
    "dense-iso",
    "tc",
    "tc-no-balance",
    "ec",
    "race",
    "pool",
    "relu",
    "race-full",
];

/// `ditmoe ablate --preset PRESET --out OUT` followed by `flags`.
fn ablate(preset: &Path, out: &Path, flags: &[&str]) -> Output {
    let mut args = vec![
        "ablate",
        "--preset",
        preset.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(flags);
    ditmoe(&args)
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run(preset: &Path, out: &Path) -> String {
    let result = ablate(preset, out, &[]);
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(result.status.success(), "{stderr}");
    stderr
}

#[test]
fn a_miniature_ablation_writes_a_complete_consistent_report_and_resumes() {
    let dir = scratch("ablate");
    let preset = dir.join("mini.toml");
    std::fs::write(&preset, MINI).unwrap();
    let out = dir.join("out");
    run(&preset, &out);

    // Every file exists and parses.
    let summary = json(&out.join("summary.json"));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let variant_seconds: f64 = summary["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["train_seconds"].as_f64().unwrap() + v["eval_seconds"].as_f64().unwrap())
        .sum();
    assert!(
        report.contains(&format!(
            "the variants' training and evaluation took {variant_seconds:.0} s in all"
        )),
        "{report}"
    );
    assert!(out.join("classifier.safetensors").exists());
    for name in VARIANTS {
        let png = std::fs::read(out.join("samples").join(format!("{name}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}.png");
        let evaluation = json(&out.join("runs").join(name).join("evaluation.json"));
        assert!(evaluation["quality"]["frechet_distance"]
            .as_f64()
            .unwrap()
            .is_finite());
        json(
            &out.join("runs")
                .join(name)
                .join("checkpoint")
                .join("state.json"),
        );
        assert!(report.contains(&format!("| {name} |")), "{name} has a row");
    }
    let mut figures = 0;
    for entry in std::fs::read_dir(out.join("plots")).unwrap() {
        let path = entry.unwrap().path();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{}",
            path.display()
        );
        assert_eq!(svg.matches("<svg").count(), 1);
        figures += 1;
    }
    // loss, balance, quality, experts per token, and per MoE variant: load, tables, positions.
    assert_eq!(figures, 4 + 3 * 7);
    for link in report.split("](").skip(1) {
        let target = &link[..link.find(')').unwrap()];
        assert!(out.join(target).exists(), "the report links {target}");
    }

    // The report's numbers are the JSONL's: recompute the final loss from the log.
    let rows = summary["variants"].as_array().unwrap();
    assert_eq!(rows.len(), VARIANTS.len());
    for row in rows {
        let name = row["name"].as_str().unwrap();
        let log =
            std::fs::read_to_string(out.join("metrics").join(format!("{name}.jsonl"))).unwrap();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines
                .iter()
                .map(|l| l["step"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [2, 4, 6]
        );
        // Final window: steps > 80% of 6, i.e. the line of step 6.
        let last = &lines[2];
        assert_eq!(
            row["final_loss"].as_f64().unwrap(),
            last["loss"].as_f64().unwrap()
        );
        assert!(report.contains(&format!(
            "| {name} | {:.4} ±",
            last["loss"].as_f64().unwrap()
        )));
        assert_eq!(
            row["train_seconds"].as_f64().unwrap(),
            last["elapsed_s"].as_f64().unwrap()
        );
        assert!(
            row["peak_heap_mib"].as_f64().unwrap() > 0.0,
            "the binary counts its heap"
        );
        let moe = name != "dense" && name != "dense-iso";
        assert_eq!(row["routing"].is_null(), !moe, "{name}");
        assert_eq!(row["specialization"].is_null(), !moe, "{name}");
        if moe {
            let cv = row["routing"]["coefficient_of_variation"].as_f64().unwrap();
            let logged: f64 = last["routing"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["coefficient_of_variation"].as_f64().unwrap())
                .sum::<f64>()
                / 2.0;
            assert!((cv - logged).abs() < 1e-12, "{name}: {cv} vs {logged}");
        }
    }
    // Expert choice and the global pool's training rule give every expert the same load.
    for name in ["ec", "pool"] {
        let row = rows.iter().find(|r| r["name"] == name).unwrap();
        assert_eq!(row["routing"]["exactly_uniform"], true, "{name}");
        assert_eq!(
            row["routing"]["coefficient_of_variation"].as_f64().unwrap(),
            0.0,
            "{name}"
        );
    }
    assert!(report.contains("exactly uniform"));
    // Sampling alone or in a batch of 16: identical for the rules that route each image on its
    // own, different for the batch race; token choice gives every token k = 2 experts at every
    // noise level.
    let gap = |name: &str| {
        let evaluation = json(&out.join(format!("runs/{name}/evaluation.json")));
        evaluation["batch_gap"]["max_abs"].as_f64().unwrap()
    };
    assert_eq!(gap("tc"), 0.0);
    assert_eq!(
        gap("race-full"),
        0.0,
        "the learned threshold routes each image alone"
    );
    assert!(gap("race") > 0.0, "the batch race depends on the batch");
    assert!(report.contains("## Batch-size gap"));
    assert!(report.contains("## Block output norm by depth"));
    assert!(report.contains("| DiffMoE Table 3 | global pool < expert choice < dense"));
    assert!(report.contains("| Race-DiT Table 2, ReMoE Fig. 8 |"));
    let evaluation = json(&out.join("runs/dense/evaluation.json"));
    assert_eq!(evaluation["block_output_rms"].as_array().unwrap().len(), 2);
    assert!(report.contains("## Experts per token by timestep and class"));
    let (_, per_token) = report
        .split_once("## Experts per token by timestep and class")
        .unwrap();
    let tc_block = per_token
        .lines()
        .find(|line| line.starts_with("| `tc` | 1 |"))
        .unwrap();
    assert!(tc_block.matches("2.00").count() >= 2, "{tc_block}");
    let sweeps = summary["sweeps"].as_array().unwrap();
    assert_eq!(sweeps.len(), 7, "one sweep per MoE variant");

    // A second run skips every finished variant and leaves the checkpoints alone.
    let state = out.join("runs/tc/checkpoint/model.safetensors");
    let before = std::fs::metadata(&state).unwrap().modified().unwrap();
    let stderr = run(&preset, &out);
    assert_eq!(
        stderr.matches("skipped").count(),
        VARIANTS.len(),
        "{stderr}"
    );
    assert_eq!(
        std::fs::metadata(&state).unwrap().modified().unwrap(),
        before
    );
    let again = json(&out.join("summary.json"));
    assert_eq!(again["variants"], summary["variants"]);

    // A variant interrupted after training (no evaluation yet) is evaluated, not retrained.
    std::fs::remove_file(out.join("runs/ec/evaluation.json")).unwrap();
    let stderr = run(&preset, &out);
    assert_eq!(
        stderr.matches("skipped").count(),
        VARIANTS.len() - 1,
        "{stderr}"
    );
    let without_timing = |summary: serde_json::Value| {
        let mut rows = summary["variants"].clone();
        for row in rows.as_array_mut().unwrap() {
            row.as_object_mut().unwrap().remove("eval_seconds");
        }
        rows
    };
    assert_eq!(
        without_timing(json(&out.join("summary.json"))),
        without_timing(summary),
        "re-evaluating gives the same numbers"
    );

    // A subset re-run adds to the report: the variants it did not select stay in it.
    let full = json(&out.join("summary.json"));
    let subset = ablate(&preset, &out, &["--variants", "tc"]);
    assert!(subset.status.success(), "{}", common::stderr(&subset));
    assert_eq!(
        without_timing(json(&out.join("summary.json"))),
        without_timing(full),
        "a --variants subset keeps the other finished variants in the report"
    );

    // Another seed into the same directory is refused rather than mixed in, before any work.
    let classifier_before = std::fs::read(out.join("classifier.safetensors")).unwrap();
    let refused = ablate(&preset, &out, &["--seed", "9"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("different config"));
    assert_eq!(
        std::fs::read(out.join("classifier.safetensors")).unwrap(),
        classifier_before,
        "the refused run retrained nothing"
    );
    let unknown = ablate(&preset, &out, &["--variants", "tc,nope"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no variant `nope`"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_train_run_directory_too_many_real_images_or_a_damaged_variant_is_refused_untouched() {
    let dir = scratch("ablate-refusals");
    let preset = dir.join("greedy.toml");
    std::fs::write(
        &preset,
        MINI.replace("real_images = 100", "real_images = 300"),
    )
    .unwrap();
    let out = dir.join("out");
    let refused = ablate(&preset, &out, &[]);
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success());
    assert!(
        message.contains("evaluation.real_images = 300") && message.contains("has 400 images"),
        "{message}"
    );
    assert!(!out.exists(), "nothing was created");

    let mini = dir.join("mini.toml");
    std::fs::write(&mini, MINI).unwrap();
    let train_run = dir.join("train-run");
    std::fs::create_dir_all(&train_run).unwrap();
    std::fs::write(train_run.join("metrics.jsonl"), "").unwrap();
    let refused = ablate(&mini, &train_run, &[]);
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        message.contains("holds a `ditmoe train` run (metrics.jsonl)"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_dir(&train_run).unwrap().count(),
        1,
        "nothing was added"
    );

    // A variant whose only checkpoint was damaged after its save is not retrained over.
    let out = dir.join("damaged");
    let damaged = out.join("runs").join("dense").join("checkpoint");
    std::fs::create_dir_all(&damaged).unwrap();
    std::fs::write(damaged.join("state.json"), "{").unwrap();
    let refused = ablate(&mini, &out, &["--variants", "dense"]);
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        message.contains("no complete checkpoint")
            && message.contains("model.safetensors is missing"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(damaged.join("state.json")).unwrap(),
        "{"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_ablation_runs_on_a_gpu() {
    // cuda:0 is the PTX emulator unless this machine has a GPU: slow, so one variant and no
    // batch-size gap.
    let dir = scratch("ablate-gpu");
    let preset = dir.join("mini.toml");
    let without_gap = MINI.replace("[evaluation]\n", "[evaluation]\nbatch_gap_seeds = 0\n");
    assert_ne!(without_gap, MINI);
    std::fs::write(&preset, without_gap).unwrap();
    let out = dir.join("out");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ditmoe"));
    command
        .args(["ablate", "--preset"])
        .arg(&preset)
        .arg("--out")
        .arg(&out);
    command.args(["--variants", "tc", "--device", "cuda"]);
    if let ditmoe_cuda::DriverStatus::Missing(_) = ditmoe_cuda::driver_status() {
        command.env(ditmoe_cuda::registry::EMULATOR_ENV, "1");
    }
    let result = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("on cuda:0"), "{stderr}");
    let summary = json(&out.join("summary.json"));
    assert_eq!(summary["variants"].as_array().unwrap().len(), 1);
    let evaluation = json(&out.join("runs").join("tc").join("evaluation.json"));
    assert!(evaluation["quality"]["frechet_distance"]
        .as_f64()
        .unwrap()
        .is_finite());
    std::fs::remove_dir_all(dir).unwrap();
}
