//! The `ditmoe` binary against careless use of run directories and streams: a used `--out`
//! is refused without `--resume` or `--overwrite`, a run directory in use is refused, a run
//! killed mid-way resumes (taking over its stale lock), closed or full stdout and stderr end a
//! command without a panic, and a truncated dataset file is a clean error.

mod common;

use common::{ditmoe, scratch, stderr, train};
use ditmoe_experiments::run_lock::RunLock;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ditmoe");

/// A dense model of one block on 8×8 images: a step takes milliseconds.
fn config(data: &str, channels: usize) -> String {
    format!(
        r#"
        steps = 2
        batch_size = 2
        lr = 1e-3
        checkpoint_every = 1
        log_every = 1
        objective = {{ kind = "flow", time_scale = 1000.0 }}
        data = {data}
        sample = {{ sampler = {{ kind = "euler" }}, steps = 2, cfg_scale = 1.0 }}
        [model]
        input_size = 8
        patch_size = 4
        in_channels = {channels}
        hidden_size = 8
        depth = 1
        num_heads = 2
        num_classes = 10
        learn_sigma = false
        "#
    )
}

/// A fresh folder for one test with the tiny config in it.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let dir = scratch(&format!("rundir-{name}"));
    let path = dir.join("tiny.toml");
    let shapes = r#"{ kind = "shapes", size = 8, count = 20 }"#;
    std::fs::write(&path, config(shapes, 3)).unwrap();
    (dir, path)
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    files
}

fn checkpoint_step(run: &Path) -> u64 {
    let text = std::fs::read_to_string(run.join("checkpoint/state.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["step"]
        .as_u64()
        .unwrap()
}

/// The steps of the lines of a run's metrics log.
fn logged_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_used_directory_needs_resume_or_overwrite_and_resume_extends() {
    let (dir, config) = setup("used");
    let run = dir.join("run");
    assert!(train(&config, &run, &[]).status.success());
    let before = snapshot(&run);
    let again = train(&config, &run, &["--steps", "1"]);
    assert_eq!(again.status.code(), Some(1));
    let message = stderr(&again);
    assert!(
        message.contains("--resume") && message.contains("--overwrite"),
        "{message}"
    );
    assert_eq!(snapshot(&run), before, "the refused run touched nothing");

    let replaced = train(&config, &run, &["--steps", "1", "--overwrite"]);
    assert!(replaced.status.success(), "{}", stderr(&replaced));
    assert!(stderr(&replaced).contains("--overwrite: a run there is replaced"));
    assert_eq!(checkpoint_step(&run), 1);

    let extended = train(&config, &run, &["--steps", "3", "--resume"]);
    assert!(extended.status.success(), "{}", stderr(&extended));
    assert!(String::from_utf8_lossy(&extended.stdout).contains("trained 2 steps"));
    assert_eq!(checkpoint_step(&run), 3);
    assert_eq!(logged_steps(&run), vec![1, 2, 3]);
    let done = train(&config, &run, &["--steps", "3", "--resume"]);
    assert!(String::from_utf8_lossy(&done.stdout).contains("nothing to do"));
    let fewer = train(&config, &run, &["--steps", "2", "--resume"]);
    assert_eq!(fewer.status.code(), Some(1));
    assert!(stderr(&fewer).contains("--steps 3 or more"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_directory_in_use_is_refused_and_a_dead_owner_is_taken_over() {
    let (dir, config) = setup("lock");
    let run = dir.join("run");
    let lock = RunLock::acquire(&run).unwrap();
    let refused = train(&config, &run, &[]);
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(
        message.contains(&run.display().to_string())
            && message.contains(&format!("process {}", std::process::id())),
        "{message}"
    );
    let ablation = dir.join("ablation");
    let other_lock = RunLock::acquire(&ablation).unwrap();
    let refused = ditmoe(&["ablate", "--out", ablation.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("in use by another run"));
    drop((lock, other_lock));

    // pid_max is at most 2^22, so no process has this pid.
    std::fs::write(run.join(".lock"), "process 4194305 on host gone\n").unwrap();
    let taken = train(&config, &run, &[]);
    assert!(taken.status.success(), "{}", stderr(&taken));
    assert!(stderr(&taken).contains("taking over the lock of a run that is gone (process 4194305"));
    assert!(!run.join(".lock").exists(), "released at the end");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn closed_or_full_output_streams_end_without_a_panic() {
    let (dir, config) = setup("streams");
    let run = dir.join("run");
    let full = || Stdio::from(std::fs::File::create("/dev/full").unwrap());
    let args = |out: &Path| {
        let mut args: Vec<String> = ["train", "--config", config.to_str().unwrap(), "--out"]
            .map(String::from)
            .to_vec();
        args.push(out.display().to_string());
        args
    };
    // stdout on a full disk: the run is done and checkpointed, then the summary fails.
    let output = Command::new(BIN)
        .args(args(&run))
        .stdout(full())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("writing to stdout") && !message.contains("panicked"),
        "{message}"
    );
    assert_eq!(checkpoint_step(&run), 2);

    // stderr on a full disk: nothing can be said, but the exit code says it.
    let output = Command::new(BIN)
        .args(args(&dir.join("run-stderr-full")))
        .stderr(full())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(checkpoint_step(&dir.join("run-stderr-full")), 2);

    // stderr closed: the progress lines must not land in a file the run opens.
    let closed = dir.join("run-stderr-closed");
    let status = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" \"$@\" 2>&-")
        .arg(BIN)
        .args(args(&closed))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for line in std::fs::read_to_string(closed.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }

    // stdout a pipe closed before anything is written (`ditmoe sample … | true`).
    let grid = dir.join("grid.png");
    let checkpoint = run.join("checkpoint");
    let mut child = Command::new(BIN)
        .args(["sample", "--n", "10", "--checkpoint"])
        .arg(&checkpoint)
        .arg("--out")
        .arg(&grid)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let message = stderr(&output);
    assert!(
        output.status.success() && !message.contains("panicked"),
        "{message}"
    );
    assert!(grid.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_second_run_is_refused_while_the_first_trains_and_a_killed_run_resumes() {
    let (dir, config) = setup("killed");
    let run = dir.join("run");
    let mut first = Command::new(BIN)
        .args(["train", "--steps", "100000", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Until the first run has checkpointed a few times.
    let began = std::time::Instant::now();
    while !run.join("metrics.jsonl").exists()
        || std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
            < 5
    {
        assert!(began.elapsed().as_secs() < 60, "the first run never logged");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = train(&config, &run, &["--steps", "100000", "--resume"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains(&format!("process {}", first.id())),
        "{}",
        stderr(&second)
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // Killed anywhere in its loop, even mid-save: a complete checkpoint is there.
    let checkpoint = ditmoe_experiments::train::checkpoint_dir(&run).expect("a checkpoint");
    let step = ditmoe_experiments::train::read_state(&checkpoint)
        .unwrap()
        .step;
    let until = (step + 2).to_string();
    let resumed = train(&config, &run, &["--steps", &until, "--resume"]);
    let message = stderr(&resumed);
    assert!(resumed.status.success(), "{message}");
    assert!(message.contains("taking over the lock"), "{message}");
    assert_eq!(checkpoint_step(&run), step + 2);
    assert_eq!(logged_steps(&run), (1..=step + 2).collect::<Vec<_>>());
    std::fs::remove_dir_all(dir).unwrap();
}

/// An IDX file of unsigned bytes: magic, big-endian sizes, data.
fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    dims.iter().for_each(|d| bytes.extend(d.to_be_bytes()));
    bytes.extend(data);
    bytes
}

#[test]
fn a_truncated_or_mislabelled_dataset_is_a_clean_error() {
    let (dir, _) = setup("idx");
    let (images, labels) = (dir.join("images.idx"), dir.join("labels.idx"));
    let data = format!(
        r#"{{ kind = "idx", images = "{}", labels = "{}" }}"#,
        images.display(),
        labels.display()
    );
    let config = dir.join("idx.toml");
    std::fs::write(&config, self::config(&data, 1)).unwrap();
    let full = idx(&[4, 8, 8], &[128; 4 * 64]);
    std::fs::write(&images, &full[..full.len() - 10]).unwrap();
    std::fs::write(&labels, idx(&[4], &[0, 1, 2, 3])).unwrap();
    let output = train(&config, &dir.join("run"), &[]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains(&images.display().to_string()) && message.contains("truncated"),
        "{message}"
    );
    std::fs::write(&images, &full).unwrap();
    std::fs::write(&labels, idx(&[4], &[0, 1, 12, 3])).unwrap();
    let output = train(&config, &dir.join("run"), &[]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains(&labels.display().to_string()) && message.contains("label 12"),
        "{message}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A character device node at `path` (as `mknod path c 1 7`, /dev/full's numbers).
fn device_node(path: &Path) {
    let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; mknod reads it and returns.
    let made = unsafe { libc::mknod(name.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 7)) };
    assert_eq!(made, 0, "mknod (the tests run as root)");
}

fn is_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .file_type()
        .is_char_device()
}

#[test]
fn forward_and_sample_never_write_over_their_inputs_or_a_device() {
    let (dir, config) = setup("outputs");
    let run = dir.join("run");
    assert!(train(&config, &run, &[]).status.success());
    let checkpoint = run.join("checkpoint");
    let (model, ema) = (
        checkpoint.join("model.safetensors"),
        checkpoint.join("ema.safetensors"),
    );
    let node = dir.join("devfull");
    device_node(&node);
    let before = snapshot(&checkpoint);
    let forward = |out: &Path| {
        ditmoe(&[
            "forward",
            "--checkpoint",
            model.to_str().unwrap(),
            "--inputs",
            ema.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    for (out, expected) in [
        (&model, "same file as --checkpoint"),
        (&ema, "same file as --inputs"),
        (&node, "not a regular file"),
    ] {
        let refused = forward(out);
        assert_eq!(refused.status.code(), Some(1), "{out:?}");
        assert!(stderr(&refused).contains(expected), "{}", stderr(&refused));
    }
    let sample = |out: &Path, n: &str| {
        ditmoe(&[
            "sample",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--n",
            n,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let link = dir.join("link.png");
    std::os::unix::fs::symlink(&ema, &link).unwrap();
    let node_png = dir.join("devfull.png");
    device_node(&node_png);
    for (out, n, expected) in [
        (
            checkpoint.join("grid.png"),
            "10",
            "inside the checkpoint directory",
        ),
        (link.clone(), "10", "inside the checkpoint directory"),
        (ema.clone(), "10", "expected a path ending in .png"),
        (dir.join("grid.jpg"), "10", "expected a path ending in .png"),
        (node_png.clone(), "10", "not a regular file"),
        (dir.join("grid.png"), "65536", "65540 samples"),
    ] {
        let refused = sample(&out, n);
        assert_eq!(refused.status.code(), Some(1), "{out:?}");
        assert!(stderr(&refused).contains(expected), "{}", stderr(&refused));
    }
    assert_eq!(
        snapshot(&checkpoint),
        before,
        "no checkpoint file was touched"
    );
    assert!(is_device(&node) && is_device(&node_png));
    assert!(!dir.join("grid.jpg").exists() && !dir.join("grid.png").exists());
    let written = sample(&dir.join("grid.png"), "10");
    assert!(written.status.success(), "{}", stderr(&written));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_damaged_checkpoint_is_named_on_resume_and_overwrite_is_not_suggested() {
    let (dir, config) = setup("damaged");
    let run = dir.join("run");
    assert!(train(&config, &run, &[]).status.success());
    let state = run.join("checkpoint/state.json");
    let model = run.join("checkpoint/model.safetensors");
    let good_state = std::fs::read_to_string(&state).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&good_state).unwrap();
    value["seconds"] = serde_json::json!(0.123456789);
    let huge_seconds = serde_json::to_string_pretty(&value)
        .unwrap()
        .replace("0.123456789", "-1e400");
    let resume = || train(&config, &run, &["--resume", "--steps", "3"]);
    for (damaged_state, expected) in [("{", "state.json"), (huge_seconds.as_str(), "state.json")] {
        std::fs::write(&state, damaged_state).unwrap();
        let refused = resume();
        assert_eq!(refused.status.code(), Some(1));
        let message = stderr(&refused);
        assert!(
            message.contains(expected) && message.contains("line"),
            "{message}"
        );
        assert!(!message.contains("start it again"), "{message}");
    }
    std::fs::write(&state, &good_state).unwrap();
    let aside = dir.join("model.safetensors");
    std::fs::rename(&model, &aside).unwrap();
    std::fs::create_dir(&model).unwrap();
    let message = stderr(&resume());
    assert!(
        message.contains("model.safetensors is missing or not a file")
            && message.contains("--overwrite would discard"),
        "{message}"
    );
    std::fs::remove_dir(&model).unwrap();
    std::fs::rename(&aside, &model).unwrap();
    let resumed = resume();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(checkpoint_step(&run), 3);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_run_that_stopped_before_logging_a_step_leaves_a_usable_directory() {
    let (dir, config) = setup("aborted");
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join(".lock"), "process 4194305 on host gone\n").unwrap();
    std::fs::write(run.join("metrics.jsonl"), "").unwrap();
    let fresh = train(&config, &run, &[]);
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    assert_eq!(checkpoint_step(&run), 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn checkpoint_names_taken_by_files_and_a_file_as_out_are_refused_before_training() {
    let (dir, config) = setup("names");
    let run = dir.join("run");
    assert!(train(&config, &run, &[]).status.success());
    for name in ["checkpoint-old", "checkpoint-new"] {
        let blocker = run.join(name);
        std::fs::write(&blocker, "mine").unwrap();
        for more in [&["--resume", "--steps", "4"][..], &["--overwrite"][..]] {
            let refused = train(&config, &run, more);
            assert_eq!(refused.status.code(), Some(1));
            let message = stderr(&refused);
            assert!(
                message.contains(&format!("{name} exists and is not a directory")),
                "{message}"
            );
        }
        assert_eq!(std::fs::read_to_string(&blocker).unwrap(), "mine");
        std::fs::remove_file(&blocker).unwrap();
    }
    assert_eq!(checkpoint_step(&run), 2, "nothing was trained or removed");
    let file_out = train(&config, Path::new("/dev/null"), &[]);
    assert_eq!(file_out.status.code(), Some(1));
    assert!(stderr(&file_out).contains("--out /dev/null: not a directory"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_memory_check_uses_the_address_space_limit_and_names_it() {
    use std::os::unix::process::CommandExt;
    let (dir, _) = setup("rlimit");
    let big = dir.join("big.toml");
    let shapes = r#"{ kind = "shapes", size = 8, count = 20 }"#;
    let text = config(shapes, 3).replace(
        "hidden_size = 8\n        depth = 1",
        "hidden_size = 1024\n        depth = 8",
    );
    std::fs::write(&big, text).unwrap();
    let mut command = Command::new(BIN);
    command.args(["train", "--config", big.to_str().unwrap(), "--out"]);
    command.arg(dir.join("run"));
    // SAFETY: setrlimit is async-signal-safe; the child only lowers its own limits.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 512 << 20,
                rlim_max: 512 << 20,
            };
            match libc::setrlimit(libc::RLIMIT_AS, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let refused = command.output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(
        message.contains("this machine has 0.5 GiB (its RLIMIT_AS limit)"),
        "{message}"
    );
    assert!(!dir.join("run").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn forward_replaces_only_its_own_outputs() {
    let (dir, config) = setup("forward-own");
    let run = dir.join("run");
    assert!(train(&config, &run, &[]).status.success());
    let before = snapshot(&run);
    let forward = |checkpoint: &Path, out: &Path| {
        ditmoe(&[
            "forward",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--inputs",
            common::fixture("dit-dense", "inputs.safetensors")
                .to_str()
                .unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let weights = common::fixture("dit-dense", "weights.safetensors");
    for victim in [
        run.join("metrics.jsonl"),
        run.join("checkpoint/model.safetensors"),
    ] {
        let refused = forward(&weights, &victim);
        assert_eq!(refused.status.code(), Some(1), "{victim:?}");
        assert!(
            stderr(&refused).contains("was not written by `ditmoe forward`"),
            "{}",
            stderr(&refused)
        );
    }
    assert!(before == snapshot(&run), "the run's files are untouched");
    let own = dir.join("out.safetensors");
    for _ in 0..2 {
        let written = forward(&weights, &own);
        assert!(written.status.success(), "{}", stderr(&written));
    }
    let folder = forward(&run.join("checkpoint"), &dir.join("x.safetensors"));
    assert!(
        stderr(&folder).contains("expected a safetensors file, found a directory"),
        "{}",
        stderr(&folder)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn train_refuses_an_ablation_directory_and_its_variant_runs() {
    let (dir, config) = setup("in-ablation");
    let ablation = dir.join("ablation");
    for folder in ["runs", "metrics", "samples", "plots"] {
        std::fs::create_dir_all(ablation.join(folder)).unwrap();
    }
    for out in [ablation.clone(), ablation.join("runs/tc")] {
        let refused = train(&config, &out, &["--overwrite"]);
        assert_eq!(refused.status.code(), Some(1), "{out:?}");
        assert!(
            stderr(&refused).contains("inside the ablation directory"),
            "{}",
            stderr(&refused)
        );
        assert!(!out.join("checkpoint").exists());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resuming_over_a_shortened_metrics_log_says_which_steps_it_lacks() {
    let (dir, config) = setup("metrics-gap");
    let run = dir.join("run");
    assert!(train(&config, &run, &[]).status.success());
    let log = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.lines().next().unwrap().to_string() + "\n").unwrap();
    let resumed = train(&config, &run, &["--resume", "--steps", "3"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains("ends at step 1 but the checkpoint is at step 2"),
        "{}",
        stderr(&resumed)
    );
    assert_eq!(logged_steps(&run), [1, 3]);
    std::fs::remove_dir_all(dir).unwrap();
}
