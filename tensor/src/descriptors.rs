//! What the ops say to the backends, in one place with no kernels: the op families (shared
//! with the PTX kernels, which take the codes `ditmoe_cuda::op` derives from them), the
//! hyper-parameters of the fused ops, and the small structs fused ops return.

use std::sync::{Arc, OnceLock};

pub use ditmoe_cuda::op::{BinaryOp, ReduceOp, UnaryOp};

use crate::backend::Operand;
use crate::error::{Result, TensorError};
use crate::{Device, Tensor};

/// What the layer-norm backward pass needs from the forward: per-row mean and 1/σ, shaped
/// like the input without its last dimension.
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

/// The gradients of attention with respect to its three inputs.
#[derive(Debug, Clone)]
pub struct AttentionGrads {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
}

/// The hyper-parameters of one AdamW step; `step` is 1-based (for the bias corrections
/// 1 − βᵗ).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWHyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Multiplies the gradient first (the clipping factor).
    pub grad_scale: f64,
    pub step: u64,
}

impl AdamWHyper {
    /// 1 − β₁ᵗ and 1 − β₂ᵗ.
    pub fn corrections(&self) -> (f64, f64) {
        let t = self.step.max(1) as i32;
        (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t))
    }
}

/// A parameter and its moments after one AdamW step.
pub struct AdamWUpdate {
    pub param: Tensor,
    pub m: Tensor,
    pub v: Tensor,
}

/// The row counts of a grouped matmul's consecutive groups, and their total. The MoE dispatch
/// on a GPU leaves the counts there (`Tensor::dispatch_order`): the grouped tensor-core
/// kernels build their tile schedule from them on the device, so the host never waits for the
/// routing. A path that needs them on the host (the CPU, a GPU multiplying in f32) reads them
/// back once, on first use.
#[derive(Debug, Clone)]
pub struct GroupSizes {
    groups: usize,
    rows: usize,
    host: Arc<OnceLock<Vec<usize>>>,
    device: Option<Tensor>,
}

impl GroupSizes {
    /// Sizes known on the host.
    pub fn host(sizes: &[usize]) -> GroupSizes {
        GroupSizes {
            groups: sizes.len(),
            rows: sizes.iter().sum(),
            host: Arc::new(OnceLock::from(sizes.to_vec())),
            device: None,
        }
    }

    /// Counts `[G]` (i64) on a GPU that sum to `rows`.
    pub fn on_device(counts: Tensor, rows: usize) -> GroupSizes {
        GroupSizes {
            groups: counts.numel(),
            rows,
            host: Arc::new(OnceLock::new()),
            device: Some(counts),
        }
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups
    }
    pub fn is_empty(&self) -> bool {
        self.groups == 0
    }
    /// Rows over all groups.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The sizes on the host (read back from the device the first time).
    pub fn to_host(&self) -> Result<&[usize]> {
        if let Some(sizes) = self.host.get() {
            return Ok(sizes);
        }
        let counts = self
            .device
            .as_ref()
            .expect("sizes are on the host or a device");
        let sizes: Vec<usize> = counts
            .to_device(Device::Cpu)?
            .to_vec::<i64>()?
            .into_iter()
            .map(|c| c as usize)
            .collect();
        if sizes.iter().sum::<usize>() != self.rows {
            return Err(TensorError::invalid(
                "group sizes",
                format!(
                    "expected device counts summing to {} rows, found {sizes:?}",
                    self.rows
                ),
            ));
        }
        Ok(self.host.get_or_init(|| sizes))
    }

    /// The counts on a GPU, when the sizes were left there.
    pub fn device_counts(&self) -> Option<&Tensor> {
        self.device.as_ref()
    }

    /// The device counts as a backend operand.
    pub(crate) fn device_operand(&self) -> Option<Operand<'_>> {
        self.device.as_ref().map(Tensor::operand)
    }
}

/// The routed pairs of a MoE layer sorted by expert (stably: pairs of one expert keep their
/// order).
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// `[P]` i64: the index, among the unsorted pairs, of each sorted pair.
    pub order: Tensor,
    /// `[P]` i64: its token.
    pub token_of: Tensor,
    /// `[P]` i64: its expert.
    pub expert_of: Tensor,
    /// Pairs per expert: the row groups of the grouped GEMM (on the device on a GPU).
    pub group_sizes: GroupSizes,
}
