//! The Fréchet distance between two Gaussians fitted to feature sets (the statistic behind FID,
//! Heusel et al., 2017): d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^{½} Σ₂ Σ₁^{½})^{½}).
//! Matrix square roots come from a Jacobi eigendecomposition of symmetric matrices.

/// Mean and (population) covariance of row vectors.
pub fn mean_and_covariance(features: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = features.len().max(1) as f64;
    let d = features.first().map_or(0, Vec::len);
    let mean: Vec<f64> = (0..d)
        .map(|j| features.iter().map(|f| f[j]).sum::<f64>() / n)
        .collect();
    let mut cov = vec![vec![0.0; d]; d];
    for f in features {
        for i in 0..d {
            for j in 0..d {
                cov[i][j] += (f[i] - mean[i]) * (f[j] - mean[j]) / n;
            }
        }
    }
    (mean, cov)
}

/// Eigenvalues and eigenvectors (columns) of a symmetric matrix by cyclic Jacobi rotations.
fn symmetric_eigen(matrix: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = matrix.len();
    let mut a = matrix.to_vec();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off < 1e-22 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                // A ← A·J (columns p, q), then A ← Jᵀ·A (rows p, q).
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (row_p, row_q) = (a[p].clone(), a[q].clone());
                for (k, (apk, aqk)) in row_p.into_iter().zip(row_q).enumerate() {
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for row in v.iter_mut() {
                    let (vkp, vkq) = (row[p], row[q]);
                    row[p] = c * vkp - s * vkq;
                    row[q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i][i]).collect(), v)
}

fn matmul(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let (n, k, m) = (a.len(), b.len(), b.first().map_or(0, Vec::len));
    (0..n)
        .map(|i| {
            (0..m)
                .map(|j| (0..k).map(|p| a[i][p] * b[p][j]).sum())
                .collect()
        })
        .collect()
}

/// The principal square root of a symmetric positive semi-definite matrix (negative
/// eigenvalues from rounding are treated as 0).
fn sqrt_psd(matrix: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let (values, vectors) = symmetric_eigen(matrix);
    let n = matrix.len();
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    (0..n)
                        .map(|k| vectors[i][k] * values[k].max(0.0).sqrt() * vectors[j][k])
                        .sum()
                })
                .collect()
        })
        .collect()
}

/// Fréchet distance (squared, as FID reports it) between N(μ₁, Σ₁) and N(μ₂, Σ₂).
pub fn frechet_distance(mu1: &[f64], sigma1: &[Vec<f64>], mu2: &[f64], sigma2: &[Vec<f64>]) -> f64 {
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b).powi(2)).sum();
    let root1 = sqrt_psd(sigma1);
    let middle = matmul(&matmul(&root1, sigma2), &root1);
    // Symmetrise against rounding before the second square root.
    let n = middle.len();
    let middle: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| 0.5 * (middle[i][j] + middle[j][i]))
                .collect()
        })
        .collect();
    let cross = sqrt_psd(&middle);
    let trace = (0..n)
        .map(|i| sigma1[i][i] + sigma2[i][i] - 2.0 * cross[i][i])
        .sum::<f64>();
    mean_term + trace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_are_at_distance_zero() {
        let features: Vec<Vec<f64>> = (0..50)
            .map(|i| vec![(i as f64).sin(), (i as f64 * 0.7).cos(), i as f64 / 50.0])
            .collect();
        let (mu, sigma) = mean_and_covariance(&features);
        assert!(frechet_distance(&mu, &sigma, &mu, &sigma).abs() < 1e-9);
    }

    #[test]
    fn closed_forms() {
        // 1-D: (m1 − m2)² + (s1 − s2)².
        let d = frechet_distance(&[1.0], &[vec![4.0]], &[3.0], &[vec![9.0]]);
        assert!((d - (4.0 + 1.0)).abs() < 1e-12, "{d}");
        // Diagonal covariances: Σ_i (√a_i − √b_i)², plus the mean term.
        let s1 = vec![vec![1.0, 0.0], vec![0.0, 4.0]];
        let s2 = vec![vec![9.0, 0.0], vec![0.0, 1.0]];
        let d = frechet_distance(&[0.0, 0.0], &s1, &[1.0, 1.0], &s2);
        assert!((d - (2.0 + 4.0 + 1.0)).abs() < 1e-9, "{d}");
        // A rotated (non-diagonal) covariance against itself.
        let r = vec![vec![2.0, 1.0], vec![1.0, 2.0]];
        assert!(frechet_distance(&[0.0, 0.0], &r, &[0.0, 0.0], &r).abs() < 1e-9);
    }

    #[test]
    fn sample_statistics() {
        let (mu, sigma) = mean_and_covariance(&[vec![1.0, 2.0], vec![3.0, 6.0]]);
        assert_eq!(mu, vec![2.0, 4.0]);
        assert_eq!(sigma, vec![vec![1.0, 2.0], vec![2.0, 4.0]]);
    }
}
