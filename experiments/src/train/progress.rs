//! How a run shows its progress: a bar for a terminal, a line per metrics line, or nothing.

use super::metrics::MetricsLine;

/// How a run shows its progress.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A progress bar (for a terminal) with this label in front.
    Bar(String),
    /// A plain line per logged step, starting with this label.
    Lines(String),
    Quiet,
}

/// The progress display of a run in progress.
pub(super) enum ProgressDisplay {
    Bar(indicatif::ProgressBar),
    Lines { label: String, steps: u64 },
    Quiet,
}

impl ProgressDisplay {
    /// The display of a run of `steps` steps that starts after step `start`.
    pub(super) fn new(progress: &Progress, steps: u64, start: u64) -> Self {
        match progress {
            Progress::Bar(label) => {
                let bar = indicatif::ProgressBar::new(steps);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                    )
                    .expect("valid template"),
                );
                bar.set_prefix(label.clone());
                bar.set_position(start);
                ProgressDisplay::Bar(bar)
            }
            Progress::Lines(label) => ProgressDisplay::Lines {
                label: label.clone(),
                steps,
            },
            Progress::Quiet => ProgressDisplay::Quiet,
        }
    }

    /// Shows a metrics line just written.
    pub(super) fn logged(&self, line: &MetricsLine) {
        let (loss, images_per_s) = (line.loss, line.images_per_s);
        match self {
            ProgressDisplay::Bar(bar) => {
                bar.set_message(format!("loss {loss:.4} · {images_per_s:.0} img/s"))
            }
            ProgressDisplay::Lines { label, steps } => crate::console::eprintln(&format!(
                "{label}step {:>6}/{steps} loss {loss:.4} grad-norm {:.3} lr {:.2e} {images_per_s:.0} img/s",
                line.step, line.grad_norm, line.lr
            )),
            ProgressDisplay::Quiet => {}
        }
    }

    /// Shows that `done` steps are done.
    pub(super) fn advance(&self, done: u64) {
        if let ProgressDisplay::Bar(bar) = self {
            bar.set_position(done);
        }
    }

    pub(super) fn finish(self) {
        if let ProgressDisplay::Bar(bar) = self {
            bar.finish();
        }
    }
}
