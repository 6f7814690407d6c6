//! The module system: every layer lists its tensors under PyTorch's state-dict names.
//!
//! A [`Module`] implements one method, `visit`, calling [`Visitor::param`] for each trainable
//! tensor, [`Visitor::buffer`] for each fixed one (DiT's `pos_embed`), [`Visitor::stacked`] for
//! parameters that hold one slice per expert, and [`Visitor::child`] for each sub-module. The
//! visitor builds the dotted names (`blocks.3.attn.qkv.weight`), so names, counting, freezing,
//! initialising and checkpoints all come from that one method.
//!
//! Two views of the same tensors:
//! - the **training** view ([`Module::named_parameters`]): one entry per `Var`, what the
//!   optimiser, EMA and freezing work on. A stacked `[E, out, in]` parameter appears once, named
//!   with `*` for the expert index (`blocks.0.moe.experts.*.up_proj.weight`);
//! - the **checkpoint** view ([`Module::checkpoint_tensors`]): PyTorch's names and order, a
//!   stacked parameter as its E slices (`…experts.0.up_proj.weight`, …). State dicts,
//!   checkpoints and per-tensor gradients ([`Module::named_gradients`]) use it.

use ditmoe_autograd::Var;
use ditmoe_tensor::{Result, Tensor, TensorError};
use std::collections::BTreeMap;

/// Whether a named tensor is trained or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    Parameter,
    Buffer,
}

/// One tensor of the checkpoint view: a whole `Var`, or slice `slice` (along dim 0) of a
/// stacked one.
#[derive(Debug, Clone)]
pub struct CheckpointTensor {
    /// PyTorch's name: `blocks.3.moe.experts.5.up_proj.weight`.
    pub name: String,
    /// The training view's name of `var` (equal to `name` unless stacked).
    pub var_name: String,
    pub var: Var,
    pub kind: TensorKind,
    pub slice: Option<usize>,
}

impl CheckpointTensor {
    fn slice_of(&self, whole: Tensor) -> Tensor {
        match self.slice {
            Some(i) => select(&whole, i),
            None => whole,
        }
    }
    /// The value (a view into the stacked value for a slice).
    pub fn value(&self) -> Tensor {
        self.slice_of(self.var.value())
    }
    /// The gradient accumulated so far (a view into the stacked gradient for a slice).
    pub fn grad(&self) -> Option<Tensor> {
        self.var.grad().map(|g| self.slice_of(g))
    }
    /// The expected shape of the value.
    pub fn shape(&self) -> &[usize] {
        let shape = self.var.shape();
        if self.slice.is_some() {
            &shape[1..]
        } else {
            shape
        }
    }
}

/// Walks a module tree, tracking the dotted name prefix.
pub struct Visitor<'a> {
    prefix: Vec<String>,
    f: &'a mut dyn FnMut(CheckpointTensor),
}

impl<'a> Visitor<'a> {
    pub fn new(f: &'a mut dyn FnMut(CheckpointTensor)) -> Self {
        Visitor {
            prefix: Vec::new(),
            f,
        }
    }

    fn full_name(&self, name: &str) -> String {
        let mut full = self.prefix.join(".");
        if !full.is_empty() {
            full.push('.');
        }
        full.push_str(name);
        full
    }

    fn emit(&mut self, name: &str, var: &Var, kind: TensorKind) {
        let name = self.full_name(name);
        (self.f)(CheckpointTensor {
            var_name: name.clone(),
            name,
            var: var.clone(),
            kind,
            slice: None,
        });
    }

    /// A trainable tensor named `name` in the current module.
    pub fn param(&mut self, name: &str, var: &Var) {
        self.emit(name, var, TensorKind::Parameter);
    }

    /// A fixed tensor saved with the module but never trained.
    pub fn buffer(&mut self, name: &str, var: &Var) {
        self.emit(name, var, TensorKind::Buffer);
    }

    /// Trainable tensors stacked along dim 0 (one slice per expert, all with the same count):
    /// slice `i` of `(leaf, var)` is checkpointed as `{group}.{i}.{leaf}`, in PyTorch's order
    /// (every tensor of slice 0, then of slice 1, …); the training view names `var`
    /// `{group}.*.{leaf}`.
    pub fn stacked(&mut self, group: &str, tensors: &[(&str, &Var)]) {
        let count = tensors.first().map_or(0, |(_, var)| var.shape()[0]);
        for i in 0..count {
            for (leaf, var) in tensors {
                let tensor = CheckpointTensor {
                    name: self.full_name(&format!("{group}.{i}.{leaf}")),
                    var_name: self.full_name(&format!("{group}.*.{leaf}")),
                    var: (*var).clone(),
                    kind: TensorKind::Parameter,
                    slice: Some(i),
                };
                (self.f)(tensor);
            }
        }
    }

    /// A sub-module whose names are prefixed with `name.`.
    pub fn child(&mut self, name: &str, module: &dyn Module) {
        self.prefix.push(name.to_string());
        module.visit(self);
        self.prefix.pop();
    }
}

/// Slice `i` along dim 0, as a view.
fn select(stacked: &Tensor, i: usize) -> Tensor {
    stacked
        .narrow(0, i, 1)
        .and_then(|s| s.squeeze(0))
        .expect("a slice within its stack")
}

/// Slice `i` of a stacked training-view name: `…experts.*.w` → `…experts.{i}.w`.
fn slice_name(var_name: &str, i: usize) -> String {
    var_name.replacen(".*.", &format!(".{i}."), 1)
}

/// Renames tensors keyed by training-view names (optionally behind a prefix such as the
/// optimiser's `m.`) to the checkpoint view: a stacked tensor (its name holds `.*.`) becomes
/// its slices under PyTorch's names. What every checkpoint file is written with.
pub fn unstack_names(tensors: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for (name, tensor) in tensors {
        if !name.contains(".*.") {
            out.insert(name.clone(), tensor.clone());
            continue;
        }
        for i in 0..tensor.shape()[0] {
            out.insert(slice_name(name, i), select(tensor, i));
        }
    }
    out
}
/// A layer or model: anything that owns named tensors.
pub trait Module {
    /// Reports every tensor (and sub-module) to the visitor.
    fn visit(&self, visitor: &mut Visitor);

    /// The checkpoint view: every tensor under its PyTorch name, in visiting order, a stacked
    /// parameter as its slices.
    fn checkpoint_tensors(&self) -> Vec<CheckpointTensor> {
        let mut out = Vec::new();
        let mut collect = |tensor: CheckpointTensor| out.push(tensor);
        self.visit(&mut Visitor::new(&mut collect));
        out
    }

    /// The training view: every `Var` once with its name and kind, in visiting order.
    fn named_tensors(&self) -> Vec<(String, Var, TensorKind)> {
        self.checkpoint_tensors()
            .into_iter()
            .filter(|t| t.slice.is_none_or(|i| i == 0))
            .map(|t| (t.var_name, t.var, t.kind))
            .collect()
    }

    /// The trainable parameters with their names (training view).
    fn named_parameters(&self) -> Vec<(String, Var)> {
        self.named_tensors()
            .into_iter()
            .filter(|(_, _, k)| *k == TensorKind::Parameter)
            .map(|(n, v, _)| (n, v))
            .collect()
    }

    /// The gradients accumulated so far under PyTorch's names, in visiting order (a stacked
    /// parameter's as views of its slices): what a reference's per-tensor gradients and the
    /// global gradient norm are computed over.
    fn named_gradients(&self) -> Vec<(String, Tensor)> {
        self.checkpoint_tensors()
            .into_iter()
            .filter_map(|t| Some((t.name.clone(), t.grad()?)))
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
    /// Draws follow the checkpoint view, one slice of a stacked parameter at a time.
    fn randomize(&self, std: f64, seed: u64) -> Result<()> {
        let rng = &mut ditmoe_tensor::seeded_rng(seed);
        let mut drawn = Vec::new();
        for tensor in self.checkpoint_tensors() {
            if tensor.kind == TensorKind::Parameter {
                let dtype = tensor.var.value().dtype();
                let value = crate::init::normal(tensor.shape(), std, rng)?.to_dtype(dtype)?;
                drawn.push((tensor, value));
            }
        }
        assign(drawn)
    }

    /// PyTorch name → value of every tensor, parameters and buffers (checkpoint view).
    fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.checkpoint_tensors()
            .into_iter()
            .map(|t| (t.name.clone(), t.value()))
            .collect()
    }

    /// Replaces every tensor's value from `state` (PyTorch names). Errors name the first
    /// missing tensor, the first unexpected one, or a shape/dtype mismatch (expected vs found);
    /// nothing is changed unless everything matches.
    fn load_state_dict(&self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let tensors = self.checkpoint_tensors();
        for tensor in &tensors {
            let name = &tensor.name;
            let value = state.get(name).ok_or_else(|| {
                TensorError::invalid(
                    "load_state_dict",
                    format!(
                        "missing tensor `{name}` (expected shape {:?})",
                        tensor.shape()
                    ),
                )
            })?;
            if value.shape() != tensor.shape() {
                return Err(TensorError::invalid(
                    "load_state_dict",
                    format!(
                        "tensor `{name}`: expected shape {:?}, found {:?}",
                        tensor.shape(),
                        value.shape()
                    ),
                ));
            }
            let dtype = tensor.var.value().dtype();
            if value.dtype() != dtype {
                return Err(TensorError::invalid(
                    "load_state_dict",
                    format!(
                        "tensor `{name}`: expected dtype {dtype:?}, found {:?}",
                        value.dtype()
                    ),
                ));
            }
        }
        if let Some(extra) = state
            .keys()
            .find(|k| !tensors.iter().any(|t| &t.name == *k))
        {
            return Err(TensorError::invalid(
                "load_state_dict",
                format!("unexpected tensor `{extra}`: the model has no tensor of that name"),
            ));
        }
        assign(
            tensors
                .into_iter()
                .map(|t| {
                    let value = state[&t.name].clone();
                    (t, value)
                })
                .collect(),
        )
    }

    /// The inverse of [`unstack_names`] for this module: the slices of each stacked parameter
    /// (behind any prefix, such as the optimiser's `m.`) are stacked back under its training
    /// name; other tensors pass through. Fails naming a missing slice.
    fn stack_names(&self, tensors: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
        let mut out = tensors.clone();
        for (var_name, var, _) in self.named_tensors() {
            if !var_name.contains(".*.") {
                continue;
            }
            let first = slice_name(&var_name, 0);
            let prefixes: Vec<String> = tensors
                .keys()
                .filter_map(|k| k.strip_suffix(first.as_str()))
                .filter(|p| p.is_empty() || p.ends_with('.'))
                .map(str::to_string)
                .collect();
            for prefix in prefixes {
                let slices = (0..var.shape()[0])
                    .map(|i| {
                        let name = format!("{prefix}{}", slice_name(&var_name, i));
                        out.remove(&name).ok_or_else(|| {
                            TensorError::invalid("stack_names", format!("missing tensor `{name}`"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let stacked = Tensor::stack(&slices.iter().collect::<Vec<_>>(), 0)?;
                out.insert(format!("{prefix}{var_name}"), stacked);
            }
        }
        Ok(out)
    }
}

/// Sets each `Var` from checkpoint-view values: a whole tensor directly, a stacked one from its
/// slices (stacked in slice order).
fn assign(values: Vec<(CheckpointTensor, Tensor)>) -> Result<()> {
    let mut stacks: Vec<(String, Var, Vec<Tensor>)> = Vec::new();
    for (tensor, value) in values {
        match tensor.slice {
            None => tensor.var.set_value(value)?,
            Some(0) => stacks.push((tensor.var_name, tensor.var, vec![value])),
            Some(_) => {
                let (_, _, slices) = stacks
                    .iter_mut()
                    .find(|(name, _, _)| *name == tensor.var_name)
                    .expect("slice 0 of every stacked tensor comes first");
                slices.push(value);
            }
        }
    }
    for (_, var, slices) in stacks {
        var.set_value(Tensor::stack(&slices.iter().collect::<Vec<_>>(), 0)?)?;
    }
    Ok(())
}
