//! "What the papers report vs what we see": each published finding the variants of a run can
//! test, stated as reproduced, not reproduced, or not separable from noise at this scale, with
//! the numbers. A finding is only checked when the run has the variants it compares.
//!
//! Ranking claims (a < b in the papers' FID) are checked pair by pair on both measures this run
//! has: the Fréchet distance of the generated images (no noise estimate: one sample set) and the
//! final diffusion loss (noise: two standard errors of the difference). A pair is reproduced when
//! both agree with the paper and the loss gap exceeds its noise, not reproduced when both
//! disagree and the gap exceeds its noise, and not separable otherwise.

use super::evaluate::Evaluation;
use super::summary::VariantSummary;

/// The three verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Reproduced,
    NotReproduced,
    NotSeparable,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::NotReproduced => "not reproduced",
            Verdict::NotSeparable => "not separable from noise at this scale",
        }
    }

    /// Every part reproduced → reproduced; any part contradicted → not reproduced; else not
    /// separable.
    fn all(parts: impl IntoIterator<Item = Verdict>) -> Verdict {
        let parts: Vec<Verdict> = parts.into_iter().collect();
        if parts.contains(&Verdict::NotReproduced) {
            Verdict::NotReproduced
        } else if !parts.is_empty() && parts.iter().all(|&v| v == Verdict::Reproduced) {
            Verdict::Reproduced
        } else {
            Verdict::NotSeparable
        }
    }
}

/// One checked finding.
pub struct Finding {
    pub source: &'static str,
    pub claim: &'static str,
    pub verdict: Verdict,
    pub numbers: String,
}

/// `better` ahead of `worse`, as the paper ranks them: the pair's verdict and its numbers.
fn ranked(better: &VariantSummary, worse: &VariantSummary) -> (Verdict, String) {
    let noise = 2.0 * (better.final_loss_stderr.powi(2) + worse.final_loss_stderr.powi(2)).sqrt();
    let loss_gap = worse.final_loss - better.final_loss;
    let fd_agrees = better.frechet_distance < worse.frechet_distance;
    let verdict = match (fd_agrees, loss_gap > noise, -loss_gap > noise) {
        (true, true, _) => Verdict::Reproduced,
        (false, _, true) => Verdict::NotReproduced,
        _ => Verdict::NotSeparable,
    };
    let numbers = format!(
        "`{}` vs `{}`: FD {:.1} vs {:.1}, loss {:.4} vs {:.4} (noise {:.4})",
        better.name,
        worse.name,
        better.frechet_distance,
        worse.frechet_distance,
        better.final_loss,
        worse.final_loss,
        noise
    );
    (verdict, numbers)
}

/// A chain of the paper's ranking, best first, over the variants of `names` the run has (a
/// chain needs two).
fn ranking(
    summaries: &[VariantSummary],
    names: &[&str],
    source: &'static str,
    claim: &'static str,
) -> Option<Finding> {
    let chain: Vec<&VariantSummary> = names
        .iter()
        .filter_map(|n| summaries.iter().find(|s| s.name == *n))
        .collect();
    if chain.len() < 2 {
        return None;
    }
    let pairs: Vec<(Verdict, String)> = chain.windows(2).map(|w| ranked(w[0], w[1])).collect();
    Some(Finding {
        source,
        claim,
        verdict: Verdict::all(pairs.iter().map(|p| p.0)),
        numbers: pairs
            .iter()
            .map(|(v, n)| format!("{n}: {}", v.text()))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Routed experts per token at the least and the most noisy timestep bin, mean over blocks.
fn experts_at_noise_ends(evaluation: &Evaluation) -> Option<(f64, f64)> {
    let per_bin: Vec<Vec<f64>> = evaluation
        .specialization
        .iter()
        .map(|l| l.tables.experts_per_token().0)
        .filter(|bins| bins.len() >= 2)
        .collect();
    if per_bin.is_empty() {
        return None;
    }
    let mean = |i: usize| per_bin.iter().map(|b| b[i]).sum::<f64>() / per_bin.len() as f64;
    Some((mean(0), mean(per_bin[0].len() - 1)))
}

/// Every finding this run can check.
pub fn findings(summaries: &[VariantSummary], evaluations: &[Evaluation]) -> Vec<Finding> {
    let find = |name: &str| summaries.iter().find(|s| s.name == name);
    let mut found = Vec::new();
    // The compute-matched global pool; DiffMoE's published point (dense compute) only where the
    // run has no other.
    let pool = if find("pool").is_some() {
        "pool"
    } else {
        "diffmoe"
    };
    found.extend(ranking(
        summaries,
        &[pool, "ec", "dense", "tc"],
        "DiffMoE Table 3",
        "global pool < expert choice < dense < token choice in FID",
    ));
    found.extend(ranking(
        summaries,
        &["race", "race-image", "tc", "ec"],
        "Race-DiT Table 6",
        "race over all pairs of the batch ≤ per image < token choice < expert choice in FID",
    ));
    found.extend(ranking(
        summaries,
        &["race-threshold", "race"],
        "Race-DiT Table 1",
        "identity gates beat softmax for a batch-global race (here together with the learned threshold)",
    ));
    if let (Some(free), Some(balanced)) = (find("tc-no-balance"), find("tc")) {
        if let (Some(a), Some(b)) = (&free.routing, &balanced.routing) {
            let (free_vio, balanced_vio) = (a.max_over_mean - 1.0, b.max_over_mean - 1.0);
            found.push(Finding {
                source: "Race-DiT Table 2, ReMoE Fig. 8",
                claim: "without a balance term the load concentrates (MaxVio rises)",
                verdict: if free_vio > balanced_vio {
                    Verdict::Reproduced
                } else {
                    Verdict::NotReproduced
                },
                numbers: format!(
                    "MaxVio {free_vio:.3} without (`tc-no-balance`) vs {balanced_vio:.3} with (`tc`)"
                ),
            });
        }
    }
    let dynamic: Vec<(&str, f64, f64)> = summaries
        .iter()
        .zip(evaluations)
        .filter(|(s, _)| {
            ["pool", "diffmoe", "race-threshold", "race-full", "remoe"].contains(&s.name.as_str())
        })
        .filter_map(|(s, e)| {
            experts_at_noise_ends(e).map(|(clean, noisy)| (s.name.as_str(), clean, noisy))
        })
        .collect();
    if !dynamic.is_empty() {
        let agreeing = dynamic
            .iter()
            .filter(|(_, clean, noisy)| clean > noisy)
            .count();
        let numbers: Vec<String> = dynamic
            .iter()
            .map(|(name, clean, noisy)| format!("`{name}` {clean:.2} vs {noisy:.2}"))
            .collect();
        found.push(Finding {
            source: "Race-DiT Fig. 6",
            claim: "more experts go to the fine-detail, low-noise steps",
            verdict: match agreeing {
                n if n == dynamic.len() => Verdict::Reproduced,
                0 => Verdict::NotReproduced,
                _ => Verdict::NotSeparable,
            },
            numbers: format!(
                "experts per token at the least vs the most noisy bin: {}",
                numbers.join(", ")
            ),
        });
    }
    found
}

/// The report section; empty when the run can check nothing.
pub fn section(summaries: &[VariantSummary], evaluations: &[Evaluation]) -> String {
    let found = findings(summaries, evaluations);
    if found.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "## What the papers report vs what we see\n\nEach published finding this run's variants can test. A ranking holds pair by pair when the Fréchet distance agrees with the paper and the loss gap exceeds two standard errors; it is contradicted when both disagree beyond that; otherwise it is not separable at this scale (one seed, a small model, one sample set).\n\n| source | finding | verdict | numbers |\n|---|---|---|---|\n",
    );
    for f in found {
        md += &format!(
            "| {} | {} | **{}** | {} |\n",
            f.source,
            f.claim,
            f.verdict.text(),
            f.numbers
        );
    }
    md + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, loss: f64, fd: f64) -> VariantSummary {
        VariantSummary {
            name: name.into(),
            about: String::new(),
            steps: 10,
            final_loss: loss,
            final_loss_stderr: 0.001,
            final_aux_loss: None,
            frechet_distance: fd,
            class_accuracy: 0.5,
            images_per_s: 1.0,
            train_seconds: 1.0,
            eval_seconds: 1.0,
            gmacs: 1.0,
            params_total: 1,
            params_activated: 1,
            peak_heap_mib: None,
            routing: None,
            specialization: None,
        }
    }

    #[test]
    fn a_ranking_is_judged_pair_by_pair_on_both_measures() {
        // pool beats ec on both beyond the noise; ec vs dense is within the noise.
        let rows = [
            summary("pool", 0.180, 60.0),
            summary("ec", 0.190, 70.0),
            summary("dense", 0.1905, 65.0),
        ];
        let found = findings(&rows, &[]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].verdict, Verdict::NotSeparable);
        assert!(found[0].numbers.contains("`pool` vs `ec`: FD 60.0 vs 70.0"));
        assert!(
            found[0].numbers.starts_with("`pool` vs `ec`")
                && found[0].numbers.contains("reproduced;")
        );
        // Reversed beyond the noise on both measures: not reproduced.
        let reversed = [summary("pool", 0.200, 80.0), summary("ec", 0.190, 70.0)];
        assert_eq!(findings(&reversed, &[])[0].verdict, Verdict::NotReproduced);
        let agreed = [summary("pool", 0.180, 60.0), summary("ec", 0.190, 70.0)];
        assert_eq!(findings(&agreed, &[])[0].verdict, Verdict::Reproduced);
        assert!(section(&agreed, &[]).contains("| DiffMoE Table 3 |"));
        assert!(section(&[summary("tc", 0.2, 1.0)], &[]).is_empty());
    }
}
