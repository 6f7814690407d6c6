//! `LayerNorm` over the last dimension, with or without the affine `weight`/`bias`.

use crate::init;
use crate::module::{Module, Visitor};
use ditmoe_autograd::Var;
use ditmoe_tensor::{DType, Result, Tensor};

pub struct LayerNorm {
    pub weight: Option<Var>,
    pub bias: Option<Var>,
    pub eps: f64,
}

impl LayerNorm {
    /// With `affine`, weight starts at 1 and bias at 0 (PyTorch's defaults).
    pub fn new(dim: usize, affine: bool, eps: f64) -> Result<Self> {
        let (weight, bias) = if affine {
            (
                Some(Var::parameter(Tensor::ones(&[dim], DType::F32)?)),
                Some(Var::parameter(init::zeros(&[dim])?)),
            )
        } else {
            (None, None)
        };
        Ok(LayerNorm { weight, bias, eps })
    }

    pub fn forward(&self, x: &Var) -> Result<Var> {
        x.layer_norm(self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
}

impl Module for LayerNorm {
    fn visit(&self, v: &mut Visitor) {
        if let Some(w) = &self.weight {
            v.param("weight", w);
        }
        if let Some(b) = &self.bias {
            v.param("bias", b);
        }
    }
}
