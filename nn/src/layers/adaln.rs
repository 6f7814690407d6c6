//! adaLN-Zero conditioning (Peebles & Xie, 2023): a SiLU → Linear projection of the
//! conditioning vector c into per-channel shifts, scales and gates, zero-initialised so each
//! block starts as the identity.

use crate::layers::Linear;
use crate::module::{Module, Visitor};
use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, SeededRng};

/// `adaLN_modulation` = SiLU → Linear(D → chunks·D), split into `chunks` vectors of width D.
pub struct AdaLnModulation {
    pub linear: Linear,
    pub chunks: usize,
}

impl AdaLnModulation {
    /// Zero-initialised (adaLN-Zero).
    pub fn new(dim: usize, chunks: usize, rng: &mut SeededRng) -> Result<Self> {
        let linear = Linear::new(dim, chunks * dim, true, rng)?;
        linear.zero_init()?;
        Ok(AdaLnModulation { linear, chunks })
    }

    /// `c [N, D] → chunks × [N, D]`, in the reference's chunk order.
    pub fn forward(&self, c: &Var) -> Result<Vec<Var>> {
        self.linear.forward(&c.silu()?)?.chunk(self.chunks, 1)
    }
}

impl Module for AdaLnModulation {
    fn visit(&self, v: &mut Visitor) {
        v.child("1", &self.linear);
    }
}

/// x · (1 + scale) + shift, with `shift`/`scale` `[N, D]` broadcast over the tokens of `x [N, T, D]`.
pub fn modulate(x: &Var, shift: &Var, scale: &Var) -> Result<Var> {
    x.mul(&scale.add_scalar(1.0)?.unsqueeze(1)?)?
        .add(&shift.unsqueeze(1)?)
}

/// LayerNorm without affine parameters, eps 1e-6: every norm in DiT.
pub fn norm(x: &Var) -> Result<Var> {
    crate::layers::LayerNorm {
        weight: None,
        bias: None,
        eps: 1e-6,
    }
    .forward(x)
}
