//! Layer normalisation over the last dimension (Ba et al., 2016), with an optional affine
//! transform, and its fused backward pass.

use crate::dtype::FloatElement;
use crate::error::{Result, TensorError};
use crate::ops::reduce::{map_rows, map_rows_to_rows};
use crate::{with_float_type, Tensor};

/// What the backward pass needs from the forward: per-row mean and 1/σ, shaped like the
/// input without its last dimension.
#[derive(Debug, Clone)]
pub struct LayerNormStats {
    pub mean: Tensor,
    pub rstd: Tensor,
}

/// The gradients of a layer norm with respect to its input and affine parameters.
#[derive(Debug, Clone)]
pub struct LayerNormGrads {
    pub input: Tensor,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
}

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

fn row_stats<T: FloatElement>(row: &[T], eps: f64) -> (T, T) {
    let n = T::from_f64(row.len() as f64);
    let mean = row.iter().copied().sum::<T>() / n;
    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
    (mean, (var + T::from_f64(eps)).sqrt().recip())
}

fn layer_norm_typed<T: FloatElement>(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, LayerNormStats)> {
    let d = normalized_size(x)?;
    let stats_shape = &x.shape()[..x.rank() - 1];
    let rows: usize = stats_shape.iter().product();
    let values = x.values::<T>()?;
    let w = weight.map(|w| w.to_vec::<T>()).transpose()?;
    let b = bias.map(|b| b.to_vec::<T>()).transpose()?;
    let stats: Vec<(T, T)> = map_rows(&values, rows, d, |row| row_stats(row, eps));
    let y = map_rows_to_rows(&values, d, |r, row, out| {
        let (mean, rstd) = stats[r];
        for (j, (o, &v)) in out.iter_mut().zip(row).enumerate() {
            let scaled = (v - mean) * rstd * w.as_ref().map_or(T::one(), |w| w[j]);
            *o = scaled + b.as_ref().map_or(T::zero(), |b| b[j]);
        }
    });
    let (mean, rstd): (Vec<T>, Vec<T>) = stats.into_iter().unzip();
    let stats = LayerNormStats {
        mean: Tensor::from_vec(mean, stats_shape)?,
        rstd: Tensor::from_vec(rstd, stats_shape)?,
    };
    Ok((Tensor::from_vec(y, x.shape())?, stats))
}

fn layer_norm_backward_typed<T: FloatElement>(
    x: &Tensor,
    stats: &LayerNormStats,
    weight: Option<&Tensor>,
    has_bias: bool,
    grad_out: &Tensor,
) -> Result<LayerNormGrads> {
    let d = normalized_size(x)?;
    let values = x.values::<T>()?;
    let dy = grad_out.values::<T>()?;
    let mean = stats.mean.values::<T>()?;
    let rstd = stats.rstd.values::<T>()?;
    let w = weight.map(|w| w.to_vec::<T>()).transpose()?;
    let n = T::from_f64(d as f64);
    let dx = map_rows_to_rows(&values, d, |r, row, out| {
        let dy_row = &dy[r * d..(r + 1) * d];
        let g = |j: usize| dy_row[j] * w.as_ref().map_or(T::one(), |w| w[j]);
        let xhat = |j: usize| (row[j] - mean[r]) * rstd[r];
        let mean_g = (0..d).map(g).sum::<T>() / n;
        let mean_gx = (0..d).map(|j| g(j) * xhat(j)).sum::<T>() / n;
        for (j, o) in out.iter_mut().enumerate() {
            *o = rstd[r] * (g(j) - mean_g - xhat(j) * mean_gx);
        }
    });
    let mut dweight = vec![T::zero(); d];
    let mut dbias = vec![T::zero(); d];
    for (r, (x_row, dy_row)) in values.chunks(d.max(1)).zip(dy.chunks(d.max(1))).enumerate() {
        for j in 0..d {
            dweight[j] += dy_row[j] * (x_row[j] - mean[r]) * rstd[r];
            dbias[j] += dy_row[j];
        }
    }
    Ok(LayerNormGrads {
        input: Tensor::from_vec(dx, x.shape())?,
        weight: weight
            .map(|_| Tensor::from_vec(dweight, &[d]))
            .transpose()?,
        bias: if has_bias {
            Some(Tensor::from_vec(dbias, &[d])?)
        } else {
            None
        },
    })
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
        check_affine(self, weight)?;
        check_affine(self, bias)?;
        if self.is_cuda() {
            return crate::ops::cuda::layer_norm(self, weight, bias, eps);
        }
        with_float_type!(self.dtype(), "layer_norm", T => layer_norm_typed::<T>(self, weight, bias, eps))
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
        check_affine(self, weight)?;
        if self.is_cuda() {
            return crate::ops::cuda::layer_norm_backward(self, stats, weight, has_bias, grad_out);
        }
        with_float_type!(self.dtype(), "layer_norm_backward", T => {
            layer_norm_backward_typed::<T>(self, stats, weight, has_bias, grad_out)
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
