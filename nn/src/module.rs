//! The module system: every layer lists its tensors under PyTorch's state-dict names.
//!
//! A [`Module`] implements one method, `visit`, calling [`Visitor::param`] for each trainable
//! tensor, [`Visitor::buffer`] for each fixed one (DiT's `pos_embed`) and [`Visitor::child`]
//! for each sub-module. The visitor builds the dotted names (`blocks.3.attn.qkv.weight`), so
//! names, counting, freezing, initialising and checkpoints all come from that one method.

use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, Tensor, TensorError};
use std::collections::BTreeMap;

/// Whether a named tensor is trained or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    Parameter,
    Buffer,
}

/// Walks a module tree, tracking the dotted name prefix.
pub struct Visitor<'a> {
    prefix: Vec<String>,
    f: &'a mut dyn FnMut(&str, &Var, TensorKind),
}

impl<'a> Visitor<'a> {
    pub fn new(f: &'a mut dyn FnMut(&str, &Var, TensorKind)) -> Self {
        Visitor {
            prefix: Vec::new(),
            f,
        }
    }

    fn emit(&mut self, name: &str, var: &Var, kind: TensorKind) {
        let mut full = self.prefix.join(".");
        if !full.is_empty() {
            full.push('.');
        }
        full.push_str(name);
        (self.f)(&full, var, kind);
    }

    /// A trainable tensor named `name` in the current module.
    pub fn param(&mut self, name: &str, var: &Var) {
        self.emit(name, var, TensorKind::Parameter);
    }

    /// A fixed tensor saved with the module but never trained.
    pub fn buffer(&mut self, name: &str, var: &Var) {
        self.emit(name, var, TensorKind::Buffer);
    }

    /// A sub-module whose names are prefixed with `name.`.
    pub fn child(&mut self, name: &str, module: &dyn Module) {
        self.prefix.push(name.to_string());
        module.visit(self);
        self.prefix.pop();
    }
}

/// A layer or model: anything that owns named tensors.
pub trait Module {
    /// Reports every tensor (and sub-module) to the visitor.
    fn visit(&self, visitor: &mut Visitor);

    /// Every tensor with its full name and kind, in visiting order.
    fn named_tensors(&self) -> Vec<(String, Var, TensorKind)> {
        let mut out = Vec::new();
        let mut collect = |name: &str, var: &Var, kind: TensorKind| {
            out.push((name.to_string(), var.clone(), kind))
        };
        self.visit(&mut Visitor::new(&mut collect));
        out
    }

    /// The trainable parameters with their names.
    fn named_parameters(&self) -> Vec<(String, Var)> {
        self.named_tensors()
            .into_iter()
            .filter(|(_, _, k)| *k == TensorKind::Parameter)
            .map(|(n, v, _)| (n, v))
            .collect()
    }

    /// Number of parameter elements (buffers excluded, frozen parameters included).
    fn parameter_count(&self) -> usize {
        self.named_parameters()
            .iter()
            .map(|(_, v)| v.value().numel())
            .sum()
    }

    /// Freezes (`trainable = false`) or unfreezes every parameter whose name starts with `prefix`
    /// (empty = all). Returns how many parameters changed.
    fn set_trainable(&self, prefix: &str, trainable: bool) -> Result<usize> {
        let mut changed = 0;
        for (name, var) in self.named_parameters() {
            if name.starts_with(prefix) {
                var.set_requires_grad(trainable)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Converts every tensor (parameters and buffers) to `dtype`, e.g. f64 for gradient checks.
    fn cast(&self, dtype: ditmoe_tensor::DType) -> Result<()> {
        for (_, var, _) in self.named_tensors() {
            var.set_value(var.value().to_dtype(dtype)?)?;
        }
        Ok(())
    }

    /// Moves every tensor (parameters and buffers) to `device`; gradients and graphs built
    /// before are dropped with the old values.
    fn to_device(&self, device: ditmoe_tensor::Device) -> Result<()> {
        for (_, var, _) in self.named_tensors() {
            var.set_value(var.value().to_device(device)?)?;
        }
        Ok(())
    }

    /// Redraws every parameter from N(0, std²), keeping its dtype — zero-initialised paths
    /// included — so tests exercise every path (the reference fixtures are built the same way).
    fn randomize(&self, std: f64, seed: u64) -> Result<()> {
        let rng = &mut ditmoe_tensor::seeded_rng(seed);
        for (_, var) in self.named_parameters() {
            let dtype = var.value().dtype();
            var.set_value(crate::init::normal(var.shape(), std, rng)?.to_dtype(dtype)?)?;
        }
        Ok(())
    }

    /// name → value of every tensor, parameters and buffers.
    fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.named_tensors()
            .into_iter()
            .map(|(n, v, _)| (n, v.value()))
            .collect()
    }

    /// Replaces every tensor's value from `state`. Errors name the first missing tensor, the
    /// first unexpected one, or a shape/dtype mismatch (expected vs found); nothing is changed
    /// unless everything matches.
    fn load_state_dict(&self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let tensors = self.named_tensors();
        for (name, var, _) in &tensors {
            let value = state.get(name).ok_or_else(|| {
                TensorError::invalid(
                    "load_state_dict",
                    format!("missing tensor `{name}` (expected shape {:?})", var.shape()),
                )
            })?;
            if value.shape() != var.shape() {
                return Err(TensorError::invalid(
                    "load_state_dict",
                    format!(
                        "tensor `{name}`: expected shape {:?}, found {:?}",
                        var.shape(),
                        value.shape()
                    ),
                ));
            }
            if value.dtype() != var.value().dtype() {
                return Err(TensorError::invalid(
                    "load_state_dict",
                    format!(
                        "tensor `{name}`: expected dtype {:?}, found {:?}",
                        var.value().dtype(),
                        value.dtype()
                    ),
                ));
            }
        }
        if let Some(extra) = state
            .keys()
            .find(|k| !tensors.iter().any(|(n, _, _)| n == *k))
        {
            return Err(TensorError::invalid(
                "load_state_dict",
                format!("unexpected tensor `{extra}`: the model has no tensor of that name"),
            ));
        }
        for (name, var, _) in &tensors {
            var.set_value(state[name].clone())?;
        }
        Ok(())
    }
}
