//! SwiGLU's gated product `SiLU(gate) ⊙ up` as one node: the fused `swiglu_backward` kernel
//! gives both gradients in one pass.

use crate::Var;
use ditmoe_tensor::Result;

impl Var {
    /// `SiLU(self) ⊙ up` (shapes equal); saves the gate and the up projection.
    pub fn swiglu(&self, up: &Var) -> Result<Var> {
        let value = self.value().swiglu(&up.value())?;
        let (gate, up_value) = (self.value(), up.value());
        Ok(Var::from_op("swiglu", value, &[self, up], move |g| {
            let (dgate, dup) = gate.swiglu_backward(&up_value, g)?;
            Ok(vec![Some(dgate), Some(dup)])
        }))
    }
}
