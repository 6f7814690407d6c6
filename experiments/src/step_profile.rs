//! The report of `ditmoe train --profile`: where a training step's time goes, by section
//! (attention, routing, experts, optimizer, …) and pass, as recorded by
//! [`ditmoe_tensor::profile`]. Each boundary waits for the GPU, so the shares are honest and
//! the profiled step is slower than a plain one.

use std::fmt::Write as _;

use ditmoe_tensor::profile::{Pass, Profile};

/// One (section, pass) of the profile, averaged over the profiled steps.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRow {
    pub section: &'static str,
    pub pass: Pass,
    pub ms_per_step: f64,
    /// Of the profiled step time.
    pub share: f64,
    pub launches_per_step: f64,
    /// Device-to-host copies: each waits for the GPU to drain.
    pub downloads_per_step: f64,
    pub uploads_per_step: f64,
}

/// One GPU kernel of the profile, averaged over the profiled steps.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelRow {
    pub entry: String,
    pub launches_per_step: f64,
    /// Launch to completion, each launch timed alone.
    pub ms_per_step: f64,
}

/// Every row, most expensive first.
#[derive(Debug, Clone, PartialEq)]
pub struct StepProfile {
    pub steps: u64,
    pub rows: Vec<ProfileRow>,
    /// Empty on the CPU.
    pub kernels: Vec<KernelRow>,
}

/// How many kernels the report lists.
const KERNELS_SHOWN: usize = 15;

impl StepProfile {
    pub fn new(profile: &Profile, steps: u64) -> StepProfile {
        let costs = &profile.sections;
        let steps_f = steps.max(1) as f64;
        let total: f64 = costs.values().map(|c| c.time.as_secs_f64()).sum();
        let mut rows: Vec<ProfileRow> = costs
            .iter()
            .map(|(&(section, pass), cost)| ProfileRow {
                section,
                pass,
                ms_per_step: cost.time.as_secs_f64() * 1e3 / steps_f,
                share: if total > 0.0 {
                    cost.time.as_secs_f64() / total
                } else {
                    0.0
                },
                launches_per_step: cost.traffic.launches as f64 / steps_f,
                downloads_per_step: cost.traffic.downloads as f64 / steps_f,
                uploads_per_step: cost.traffic.uploads as f64 / steps_f,
            })
            .collect();
        rows.sort_by(|a, b| b.ms_per_step.total_cmp(&a.ms_per_step));
        let mut kernels: Vec<KernelRow> = profile
            .kernels
            .iter()
            .map(|(entry, k)| KernelRow {
                entry: entry.clone(),
                launches_per_step: k.launches as f64 / steps_f,
                ms_per_step: k.time.as_secs_f64() * 1e3 / steps_f,
            })
            .collect();
        kernels.sort_by(|a, b| b.ms_per_step.total_cmp(&a.ms_per_step));
        StepProfile {
            steps,
            rows,
            kernels,
        }
    }

    /// The profiled time of one step.
    pub fn ms_per_step(&self) -> f64 {
        self.rows.iter().map(|r| r.ms_per_step).sum()
    }

    /// The share of `section`, forward and backward together.
    pub fn share_of(&self, section: &str) -> f64 {
        self.rows
            .iter()
            .filter(|r| r.section == section)
            .map(|r| r.share)
            .sum()
    }

    /// A Markdown table, with the per-section totals the routing comparison cares about.
    pub fn to_markdown(&self, device: &str) -> String {
        let mut text = format!(
            "Training-step profile on {device}: {:.2} ms per step over {} profiled steps (every \
             section boundary waits for the device, so an unprofiled step is faster; read the \
             shares).\n\n",
            self.ms_per_step(),
            self.steps
        );
        text += "| section | pass | ms/step | share | launches/step | downloads/step | uploads/step |\n";
        text += "| --- | --- | ---: | ---: | ---: | ---: | ---: |\n";
        for r in &self.rows {
            let pass = match r.pass {
                Pass::Forward => "forward",
                Pass::Backward => "backward",
            };
            let _ = writeln!(
                text,
                "| {} | {pass} | {:.3} | {:.1}% | {:.0} | {:.0} | {:.0} |",
                r.section,
                r.ms_per_step,
                100.0 * r.share,
                r.launches_per_step,
                r.downloads_per_step,
                r.uploads_per_step
            );
        }
        text += "\nForward and backward together: ";
        let totals: Vec<String> = ["attention", "experts", "routing", "shared expert", "mlp"]
            .iter()
            .filter(|s| self.rows.iter().any(|r| r.section == **s))
            .map(|s| format!("{s} {:.1}%", 100.0 * self.share_of(s)))
            .collect();
        text += &totals.join(", ");
        text += ".\n";
        if !self.kernels.is_empty() {
            let _ = write!(
                text,
                "\nThe {} most expensive kernels (each launch timed alone, launch to completion):\n\n\
                 | kernel | launches/step | ms/step |\n| --- | ---: | ---: |\n",
                KERNELS_SHOWN.min(self.kernels.len())
            );
            for k in self.kernels.iter().take(KERNELS_SHOWN) {
                let _ = writeln!(
                    text,
                    "| {} | {:.0} | {:.3} |",
                    k.entry, k.launches_per_step, k.ms_per_step
                );
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn rows_are_per_step_and_shares_add_up() {
        let cost = |ms, launches| ditmoe_tensor::profile::Cost {
            time: Duration::from_millis(ms),
            traffic: ditmoe_tensor::profile::Traffic {
                launches,
                downloads: 2,
                ..Default::default()
            },
        };
        let sections = BTreeMap::from([
            (("attention", Pass::Forward), cost(30, 40)),
            (("attention", Pass::Backward), cost(50, 80)),
            (("routing", Pass::Forward), cost(20, 10)),
        ]);
        let kernels = BTreeMap::from([(
            "flash_forward_d64".to_string(),
            ditmoe_tensor::profile::KernelTime {
                launches: 24,
                time: Duration::from_millis(8),
            },
        )]);
        let profile = StepProfile::new(&Profile { sections, kernels }, 2);
        assert_eq!(profile.rows[0].section, "attention");
        assert_eq!(profile.rows[0].pass, Pass::Backward);
        assert!((profile.rows[0].ms_per_step - 25.0).abs() < 1e-9);
        assert!((profile.rows[0].launches_per_step - 40.0).abs() < 1e-9);
        assert!((profile.ms_per_step() - 50.0).abs() < 1e-9);
        assert!((profile.share_of("attention") - 0.8).abs() < 1e-9);
        let text = profile.to_markdown("cpu");
        assert!(text.contains("| attention | backward | 25.000 | 50.0% | 40 | 1 | 0 |"));
        assert!(text.contains("attention 80.0%, routing 20.0%"));
        assert!(text.contains("| flash_forward_d64 | 12 | 4.000 |"));
    }
}
