//! The metrics log `metrics.jsonl`: one JSON line every `log_every` steps with the means of
//! the losses since the previous line, the gradient norm, the learning rate, throughput,
//! memory and the routing of the step's batch.

use super::trainer::StepReport;
use super::RunClock;
use crate::analysis::LayerRouting;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One line of the metrics log (`metrics.jsonl`), written every `log_every` steps.
///
/// The trainer stops before logging a step with a non-finite loss or gradient norm, but a
/// rate or throughput could still overflow: JSON has no NaN or infinity, so serde_json writes
/// them as `null`, which the number fields read back as NaN.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsLine {
    pub step: u64,
    /// Mean diffusion loss over the steps since the previous line.
    #[serde(deserialize_with = "null_as_nan")]
    pub loss: f64,
    /// Mean variational-bound term (DDPM with learned σ), same window.
    pub vb: Option<f64>,
    /// Mean auxiliary (balance) loss, same window; `None` without one.
    pub aux_loss: Option<f64>,
    /// Gradient norm before clipping, this step.
    #[serde(deserialize_with = "null_as_nan")]
    pub grad_norm: f64,
    #[serde(deserialize_with = "null_as_nan")]
    pub lr: f64,
    /// Throughput over the window.
    #[serde(deserialize_with = "null_as_nan")]
    pub images_per_s: f64,
    /// Training wall time so far, over resumed parts too.
    #[serde(deserialize_with = "null_as_nan")]
    pub elapsed_s: f64,
    /// Peak heap since the run (or this resumed part of it) started; `None` when the program
    /// does not count allocations.
    pub peak_heap_mib: Option<f64>,
    /// Routing of this step's batch, per MoE block.
    pub routing: Vec<LayerRouting>,
}

/// A number, or NaN for the `null` serde_json writes in place of a non-finite one.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value: Option<f64> = serde::Deserialize::deserialize(deserializer)?;
    Ok(value.unwrap_or(f64::NAN))
}

/// Reads a metrics log, naming the file and line of anything malformed.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a metrics line", path.display(), i + 1))
        })
        .collect()
}

/// The length of the start of a metrics log that a run resumed after step `start` keeps (its
/// whole lines up to the last one of a step ≤ `start`) and the step of that last line (0 if
/// none).
fn kept_length(bytes: &[u8], start: u64, path: &Path) -> Result<(u64, u64)> {
    let (mut kept, mut last_step) = (0, 0);
    for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        if !line.ends_with(b"\n") {
            break; // torn by a kill mid-write
        }
        if line.trim_ascii().is_empty() {
            kept += line.len();
            continue;
        }
        let parsed: MetricsLine = serde_json::from_slice(line)
            .with_context(|| format!("{} line {}: not a metrics line", path.display(), i + 1))?;
        if parsed.step > start {
            break;
        }
        kept += line.len();
        last_step = parsed.step;
    }
    Ok((kept as u64, last_step))
}

/// Sums of the losses over the steps since the last metrics line.
struct Window {
    began: Instant,
    steps: u64,
    loss: f64,
    aux_loss: f64,
    vb: f64,
}

impl Window {
    fn new() -> Self {
        Window {
            began: Instant::now(),
            steps: 0,
            loss: 0.0,
            aux_loss: 0.0,
            vb: 0.0,
        }
    }
}

/// The metrics log of a run in progress.
pub(super) struct MetricsLog {
    path: PathBuf,
    file: File,
    batch_size: usize,
    window: Window,
}

impl MetricsLog {
    /// Opens `path`, emptied for a fresh run. For a run resumed from the checkpoint of step
    /// `resumed_at`, the file is cut after its last line of a step up to that one — the bytes
    /// before stay as they are — and the lines after it (logged again by the resumed run) and
    /// a torn last line (a kill mid-write) go.
    pub(super) fn open(
        path: PathBuf,
        resumed_at: Option<u64>,
        batch_size: usize,
        log_every: u64,
    ) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).write(true);
        let file = match resumed_at {
            None => options.truncate(true).open(&path),
            Some(start) => {
                let (keep, last_step) = match std::fs::read(&path) {
                    Ok(bytes) => kept_length(&bytes, start, &path)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0),
                    Err(e) => return Err(e).with_context(|| path.display().to_string()),
                };
                let due = start - start % log_every;
                if last_step < due {
                    crate::console::eprintln(&format!(
                        "note: {} ends at step {last_step} but the checkpoint is at step {start}: \
                         the log will have no lines for steps {} to {due}",
                        path.display(),
                        last_step + 1
                    ));
                }
                options
                    .append(true)
                    .open(&path)
                    .and_then(|file| file.set_len(keep).map(|_| file))
            }
        }
        .with_context(|| path.display().to_string())?;
        Ok(MetricsLog {
            path,
            file,
            batch_size,
            window: Window::new(),
        })
    }

    /// Adds step `step`'s losses to the window. On a logging step (`record`), writes the
    /// window's means as a line, starts a new window and returns the line.
    pub(super) fn add(
        &mut self,
        step: u64,
        report: &StepReport,
        record: bool,
        clock: &RunClock,
    ) -> Result<Option<MetricsLine>> {
        let scalars = &report.scalars;
        let window = &mut self.window;
        window.steps += 1;
        window.loss += scalars.loss;
        window.aux_loss += scalars.aux_loss.unwrap_or(0.0);
        window.vb += scalars.vb.unwrap_or(0.0);
        if !record {
            return Ok(None);
        }
        let n = window.steps as f64;
        let images_per_s = n * self.batch_size as f64 / window.began.elapsed().as_secs_f64();
        let routing: Vec<LayerRouting> = report
            .routing
            .iter()
            .flatten()
            .map(LayerRouting::of)
            .collect();
        let peak = ditmoe_tensor::memory::is_counting()
            .then(|| ditmoe_tensor::memory::peak_bytes() as f64 / (1u64 << 20) as f64);
        let line = MetricsLine {
            step: step + 1,
            loss: window.loss / n,
            vb: scalars.vb.is_some().then_some(window.vb / n),
            aux_loss: scalars.aux_loss.is_some().then_some(window.aux_loss / n),
            grad_norm: scalars.grad_norm,
            lr: report.lr,
            images_per_s,
            elapsed_s: clock.seconds(),
            peak_heap_mib: peak,
            routing,
        };
        let text = serde_json::to_string(&line).expect("metrics serialise");
        writeln!(self.file, "{text}").with_context(|| self.path.display().to_string())?;
        self.window = Window::new();
        Ok(Some(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_with_non_finite_numbers_reads_back_as_written() {
        let line = MetricsLine {
            step: 1,
            loss: 0.5,
            vb: None,
            aux_loss: Some(0.01),
            grad_norm: f64::NAN,
            lr: 1e-3,
            images_per_s: f64::INFINITY,
            elapsed_s: 2.0,
            peak_heap_mib: None,
            routing: vec![],
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains("\"grad_norm\":null"), "{text}");
        let path = std::env::temp_dir().join(format!("ditmoe-nan-{}.jsonl", std::process::id()));
        let logged = format!("{text}\n");
        std::fs::write(&path, &logged).unwrap();
        let read = read_metrics(&path).unwrap();
        assert!(read[0].grad_norm.is_nan() && read[0].images_per_s.is_nan());
        assert_eq!((read[0].loss, read[0].aux_loss), (0.5, Some(0.01)));
        let kept = kept_length(logged.as_bytes(), 1, &path).unwrap();
        assert_eq!(kept, (logged.len() as u64, 1));
        std::fs::remove_file(path).unwrap();
    }
}
