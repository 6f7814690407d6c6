//! Layer normalisation over the last dimension (Ba et al., 2016), with an optional affine
//! transform, and its fused backward pass.

pub use crate::descriptors::{LayerNormGrads, LayerNormStats};

use crate::error::{Result, TensorError};
use crate::layout::Layout;
use crate::Tensor;

fn normalized_size(x: &Tensor) -> Result<usize> {
    x.shape()
        .last()
        .copied()
        .ok_or_else(|| TensorError::shape("layer_norm", "rank >= 1", x.shape()))
}

fn check_affine(x: &Tensor, param: Option<&Tensor>) -> Result<()> {
    if let Some(p) = param {
        p.check_shape("layer_norm", &[normalized_size(x)?])?;
        p.check_dtype("layer_norm", x.dtype())?;
    }
    Ok(())
}

impl Tensor {
    /// y = (x − mean) / √(var + eps) · weight + bias over the last dimension.
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        Ok(self.layer_norm_with_stats(weight, bias, eps)?.0)
    }

    /// The layer norm plus the statistics its backward pass reuses.
    pub fn layer_norm_with_stats(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<(Tensor, LayerNormStats)> {
        normalized_size(self)?;
        check_affine(self, weight)?;
        check_affine(self, bias)?;
        let mut inputs = vec![self];
        inputs.extend(weight.iter().chain(bias.iter()).copied());
        let ([y, mean, rstd], device) =
            Tensor::run_on_backend("layer_norm", &inputs, |backend, x| {
                let (w, b) = (
                    weight.map(|_| &x[1]),
                    bias.map(|_| &x[1 + usize::from(weight.is_some())]),
                );
                backend.layer_norm(&x[0], w, b, eps)
            })?;
        let stats_layout = Layout::contiguous(&self.shape()[..self.rank() - 1]);
        let stats = LayerNormStats {
            mean: Tensor::from_backend(mean, stats_layout.clone(), device),
            rstd: Tensor::from_backend(rstd, stats_layout, device),
        };
        Ok((
            Tensor::from_backend(y, Layout::contiguous(self.shape()), device),
            stats,
        ))
    }

    /// Fused layer-norm backward. With x̂ = (x − mean)·rstd and g = dy·weight:
    /// dx = rstd · (g − mean(g) − x̂ · mean(g·x̂)), dweight = Σ_rows dy·x̂, dbias = Σ_rows dy.
    pub fn layer_norm_backward(
        &self,
        stats: &LayerNormStats,
        weight: Option<&Tensor>,
        has_bias: bool,
        grad_out: &Tensor,
    ) -> Result<LayerNormGrads> {
        grad_out.check_shape("layer_norm_backward", self.shape())?;
        normalized_size(self)?;
        check_affine(self, weight)?;
        let mut inputs = vec![self, grad_out, &stats.mean, &stats.rstd];
        inputs.extend(weight);
        let ((dx, dweight, dbias), device) =
            Tensor::run_on_backend("layer_norm_backward", &inputs, |backend, x| {
                backend.layer_norm_backward(
                    &x[0],
                    &x[2],
                    &x[3],
                    weight.map(|_| &x[4]),
                    has_bias,
                    &x[1],
                )
            })?;
        let d = Layout::contiguous(&[*self.shape().last().expect("rank checked")]);
        Ok(LayerNormGrads {
            input: Tensor::from_backend(dx, Layout::contiguous(self.shape()), device),
            weight: dweight.map(|w| Tensor::from_backend(w, d.clone(), device)),
            bias: dbias.map(|b| Tensor::from_backend(b, d, device)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, random_strided};

    #[test]
    fn layer_norm_matches_reference_with_and_without_affine() {
        let x = random_strided(&[4, 3, 6], -2.0, 3.0, 21);
        let w = random_strided(&[6], 0.5, 1.5, 22);
        let b = random_strided(&[6], -1.0, 1.0, 23);
        let (wv, bv) = (w.to_vec_f64(), b.to_vec_f64());
        let xv = x.to_vec_f64();
        let mut plain = Vec::new();
        let mut affine = Vec::new();
        for row in xv.chunks(6) {
            let mean = row.iter().sum::<f64>() / 6.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 6.0;
            for (j, v) in row.iter().enumerate() {
                let n = (v - mean) / (var + 1e-6).sqrt();
                plain.push(n);
                affine.push(n * wv[j] + bv[j]);
            }
        }
        assert_close(
            &x.layer_norm(None, None, 1e-6).unwrap().to_vec_f64(),
            &plain,
            1e-12,
            "plain",
        );
        assert_close(
            &x.layer_norm(Some(&w), Some(&b), 1e-6).unwrap().to_vec_f64(),
            &affine,
            1e-12,
            "affine",
        );
    }

    #[test]
    fn wrong_affine_shape_is_reported() {
        let x = Tensor::zeros(&[2, 4], crate::DType::F32).unwrap();
        let w = Tensor::ones(&[3], crate::DType::F32).unwrap();
        let err = x.layer_norm(Some(&w), None, 1e-5).unwrap_err().to_string();
        assert!(err.contains("[4]") && err.contains("[3]"), "{err}");
    }
}
