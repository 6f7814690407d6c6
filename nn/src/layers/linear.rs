//! `Linear`: y = x·Wᵀ + b with W stored `[out, in]` as in PyTorch.

use crate::init;
use crate::module::{Module, Visitor};
use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, SeededRng};

pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl Linear {
    /// DiT's initialisation: xavier-uniform weight, zero bias.
    pub fn new(
        in_features: usize,
        out_features: usize,
        bias: bool,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        Ok(Linear {
            weight: Var::parameter(init::xavier_uniform(&[out_features, in_features], rng)?),
            bias: if bias {
                Some(Var::parameter(init::zeros(&[out_features])?))
            } else {
                None
            },
        })
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Applies the layer to the last dimension of `x` (`[.., in] → [.., out]`), as one GEMM over
    /// all leading positions.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let lead = &x.shape()[..x.shape().len().saturating_sub(1)];
        let rows = x.reshape(&[usize::MAX, self.in_features()])?;
        let mut y = rows.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.add(b)?;
        }
        y.reshape(&[lead, &[self.out_features()]].concat())
    }

    /// Sets weight and bias to zero (adaLN-Zero, the final layer).
    pub fn zero_init(&self) -> Result<()> {
        self.weight.set_value(init::zeros(self.weight.shape())?)?;
        if let Some(b) = &self.bias {
            b.set_value(init::zeros(b.shape())?)?;
        }
        Ok(())
    }
}

impl Module for Linear {
    fn visit(&self, v: &mut Visitor) {
        v.param("weight", &self.weight);
        if let Some(b) = &self.bias {
            v.param("bias", b);
        }
    }
}
