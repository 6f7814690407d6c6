//! Images ↔ token sequences: patch embedding, the fixed 2-D sin-cos position table, unpatchify.

use crate::init;
use crate::module::{Module, Visitor};
use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, SeededRng, Tensor, TensorError};

/// `[N, C, H, W] → [N, (H/p)·(W/p), C·p·p]`: non-overlapping p×p patches, row-major over the
/// patch grid, each flattened in (channel, row, column) order — a stride-p convolution's view.
pub fn patchify(x: &Var, patch: usize) -> Result<Var> {
    let s = x.shape();
    if s.len() != 4 || s[2] % patch != 0 || s[3] % patch != 0 {
        return Err(TensorError::shape(
            "patchify",
            format!("[N, C, H, W] with H and W divisible by {patch}"),
            s,
        ));
    }
    let (n, c, h, w) = (s[0], s[1], s[2] / patch, s[3] / patch);
    x.reshape(&[n, c, h, patch, w, patch])?
        .permute(&[0, 2, 4, 1, 3, 5])?
        .reshape(&[n, h * w, c * patch * patch])
}

/// `[N, T, p·p·C] → [N, C, H, W]` with each token laid out as (patch row, patch column,
/// channel), channel fastest — DiT's `unpatchify`, not the inverse of [`patchify`].
pub fn unpatchify(x: &Var, patch: usize, channels: usize) -> Result<Var> {
    let s = x.shape();
    let grid = (s.get(1).copied().unwrap_or(0) as f64).sqrt() as usize;
    if s.len() != 3 || grid * grid != s[1] || s[2] != patch * patch * channels {
        return Err(TensorError::shape(
            "unpatchify",
            format!(
                "[N, T, {}] with T a square number",
                patch * patch * channels
            ),
            s,
        ));
    }
    let n = s[0];
    x.reshape(&[n, grid, grid, patch, patch, channels])?
        .permute(&[0, 5, 1, 3, 2, 4])?
        .reshape(&[n, channels, grid * patch, grid * patch])
}

/// Patch embedding `x_embedder.proj`: a p×p stride-p convolution C → D, stored as the
/// convolution weight `[D, C, p, p]` and applied as one GEMM over the flattened patches.
pub struct PatchEmbed {
    pub weight: Var,
    pub bias: Var,
    pub patch: usize,
}

impl PatchEmbed {
    /// Xavier-uniform on the weight viewed as `[D, C·p·p]`, zero bias (DiT).
    pub fn new(channels: usize, dim: usize, patch: usize, rng: &mut SeededRng) -> Result<Self> {
        let weight = init::xavier_uniform(&[dim, channels * patch * patch], rng)?
            .reshape(&[dim, channels, patch, patch])?;
        Ok(PatchEmbed {
            weight: Var::parameter(weight),
            bias: Var::parameter(init::zeros(&[dim])?),
            patch,
        })
    }

    pub fn forward(&self, x: &Var) -> Result<Var> {
        let dim = self.weight.shape()[0];
        let flat_weight = self.weight.reshape(&[dim, usize::MAX])?;
        patchify(x, self.patch)?
            .matmul(&flat_weight.t()?)?
            .add(&self.bias)
    }
}

impl Module for PatchEmbed {
    fn visit(&self, v: &mut Visitor) {
        v.param("proj.weight", &self.weight);
        v.param("proj.bias", &self.bias);
    }
}

/// The fixed 2-D sin-cos position table `[1, grid², dim]` (MAE / DiT): the first half of the
/// channels encodes the column, the second the row; each half is [sin(pos·ω), cos(pos·ω)] with
/// ω_i = 10000^(−i/(dim/4)). Computed in f64, stored as f32.
pub fn sincos_pos_embed_2d(dim: usize, grid: usize) -> Result<Tensor> {
    if dim % 4 != 0 {
        return Err(TensorError::invalid(
            "pos_embed",
            format!("expected a hidden size divisible by 4, found {dim}"),
        ));
    }
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64))
        .collect();
    let mut table = Vec::with_capacity(grid * grid * dim);
    for row in 0..grid {
        for col in 0..grid {
            for pos in [col as f64, row as f64] {
                table.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                table.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    Tensor::from_vec(table, &[1, grid * grid, dim])
}
