//! Feed-forward blocks: DiT's GELU MLP and the SwiGLU MLP of DiT-MoE's experts.

use crate::layers::Linear;
use crate::module::{Module, Visitor};
use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, SeededRng};

/// fc2(GELU_tanh(fc1(x))), with biases (ViT / DiT MLP).
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(dim: usize, hidden: usize, rng: &mut SeededRng) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::new(dim, hidden, true, rng)?,
            fc2: Linear::new(hidden, dim, true, rng)?,
        })
    }

    pub fn forward(&self, x: &Var) -> Result<Var> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu_tanh()?)
    }
}

impl Module for Mlp {
    fn visit(&self, v: &mut Visitor) {
        v.child("fc1", &self.fc1);
        v.child("fc2", &self.fc2);
    }
}

/// down(SiLU(gate(x)) ⊙ up(x)), no biases (Shazeer, 2020, "GLU Variants Improve Transformer").
pub struct SwiGlu {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl SwiGlu {
    pub fn new(dim: usize, hidden: usize, rng: &mut SeededRng) -> Result<Self> {
        Ok(SwiGlu {
            gate_proj: Linear::new(dim, hidden, false, rng)?,
            up_proj: Linear::new(dim, hidden, false, rng)?,
            down_proj: Linear::new(hidden, dim, false, rng)?,
        })
    }

    pub fn forward(&self, x: &Var) -> Result<Var> {
        let gated = self
            .gate_proj
            .forward(x)?
            .swiglu(&self.up_proj.forward(x)?)?;
        self.down_proj.forward(&gated)
    }
}

impl Module for SwiGlu {
    fn visit(&self, v: &mut Visitor) {
        v.child("gate_proj", &self.gate_proj);
        v.child("up_proj", &self.up_proj);
        v.child("down_proj", &self.down_proj);
    }
}
