//! `Var`: a tensor that remembers how it was made, and the reverse-mode sweep over that record.
//!
//! Every operation on `Var`s computes its value eagerly (define-by-run) and, when some input
//! requires a gradient, leaves behind a node holding its parents and a one-shot backward closure
//! that captures only the tensors its rule needs. [`Var::backward`] orders the nodes reachable
//! from a scalar topologically, runs the closures in reverse, sums the gradients flowing into
//! each node, and stores the totals on the leaves. Running a closure consumes it, which frees its
//! saved tensors — the graph can be walked once, as in PyTorch without `retain_graph`.

use crate::grad_mode::is_grad_enabled;
use ditmoe_tensor::{Result, Tensor, TensorError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};

/// The gradients of an op's inputs given the gradient of its output; `None` for an input that
/// gets none (an integer index, say).
pub(crate) type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send>;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

struct Node {
    id: u64,
    /// The value; replaceable (same shape and dtype) on leaves only, see [`Var::set_value`].
    value: RwLock<Tensor>,
    shape: Vec<usize>,
    requires_grad: Mutex<bool>,
    /// The op that made this value; `None` for leaves.
    op: Option<&'static str>,
    /// The profiler section it was made in (`ditmoe_tensor::profile`), for its backward rule.
    section: Option<&'static str>,
    parents: Vec<Var>,
    backward: Mutex<Option<BackwardFn>>,
    /// Accumulated gradient (leaves only).
    grad: Mutex<Option<Tensor>>,
}

/// A differentiable value: a tensor plus its place in the computation graph. Cloning is cheap
/// and shares the node.
#[derive(Clone)]
pub struct Var(Arc<Node>);

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Var")
            .field("op", &self.0.op.unwrap_or("leaf"))
            .field("shape", &self.shape())
            .field("requires_grad", &self.requires_grad())
            .finish()
    }
}

impl Var {
    fn make(
        value: Tensor,
        requires_grad: bool,
        op: Option<&'static str>,
        parents: Vec<Var>,
        backward: Option<BackwardFn>,
    ) -> Var {
        Var(Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shape: value.shape().to_vec(),
            value: RwLock::new(value),
            requires_grad: Mutex::new(requires_grad),
            op,
            section: ditmoe_tensor::profile::current_section(),
            parents,
            backward: Mutex::new(backward),
            grad: Mutex::new(None),
        }))
    }

    /// A leaf; `requires_grad` makes backward store its gradient.
    pub fn leaf(value: Tensor, requires_grad: bool) -> Var {
        Var::make(value, requires_grad, None, Vec::new(), None)
    }

    /// A leaf that requires a gradient (a trainable parameter).
    pub fn parameter(value: Tensor) -> Var {
        Var::leaf(value, true)
    }

    /// A leaf that never gets a gradient (an input, a target, a mask).
    pub fn constant(value: Tensor) -> Var {
        Var::leaf(value, false)
    }

    /// The result of op `name` on `parents`. The node records `backward` only when gradients
    /// are enabled and some parent requires one; otherwise the result is a constant and the
    /// closure (with what it saved) is dropped at once.
    pub(crate) fn from_op(
        name: &'static str,
        value: Tensor,
        parents: &[&Var],
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + 'static,
    ) -> Var {
        if is_grad_enabled() && parents.iter().any(|p| p.requires_grad()) {
            let parents = parents.iter().map(|&p| p.clone()).collect();
            Var::make(value, true, Some(name), parents, Some(Box::new(backward)))
        } else {
            Var::constant(value)
        }
    }

    /// The current value (a cheap handle sharing the storage).
    pub fn value(&self) -> Tensor {
        self.0.value.read().unwrap().clone()
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    /// Replaces the value of a leaf in place (an optimiser step, loading a checkpoint, casting a
    /// model to f64). The new value must have the same shape; graphs built earlier keep the old
    /// value, and any accumulated gradient is cleared if the dtype or device changes.
    pub fn set_value(&self, value: Tensor) -> Result<()> {
        self.ensure_leaf("set_value")?;
        value.check_shape("set_value", self.shape())?;
        let mut slot = self.0.value.write().unwrap();
        if slot.dtype() != value.dtype() || slot.device() != value.device() {
            self.zero_grad();
        }
        *slot = value;
        Ok(())
    }

    /// Write access to a leaf's value, for an update in place (the optimizer step: no new
    /// buffer per step). The value must keep its shape, dtype and device; graphs built earlier
    /// see the write only if they hold the same buffer, which the in-place tensor ops never
    /// allow (they copy a shared buffer first). The value stays locked until the guard drops.
    pub fn value_mut(&self) -> Result<ValueMut<'_>> {
        self.ensure_leaf("value_mut")?;
        Ok(ValueMut {
            value: self.0.value.write().unwrap(),
            shape: &self.0.shape,
        })
    }

    pub fn requires_grad(&self) -> bool {
        *self.0.requires_grad.lock().unwrap()
    }
    pub fn is_leaf(&self) -> bool {
        self.0.op.is_none()
    }
    /// Fails unless this is a leaf (only leaves own their value and their `requires_grad`).
    fn ensure_leaf(&self, op: &'static str) -> Result<()> {
        match self.0.op {
            None => Ok(()),
            Some(made_by) => Err(TensorError::invalid(
                op,
                format!(
                    "expected a leaf, found the output of `{made_by}`; use detach() to make a leaf"
                ),
            )),
        }
    }

    /// The name of the op that produced this value (`None` for a leaf).
    pub fn op_name(&self) -> Option<&'static str> {
        self.0.op
    }

    /// Turns gradient tracking of a leaf on or off. Non-leaf values inherit it from their inputs.
    pub fn set_requires_grad(&self, requires_grad: bool) -> Result<()> {
        self.ensure_leaf("set_requires_grad")?;
        *self.0.requires_grad.lock().unwrap() = requires_grad;
        Ok(())
    }

    /// The gradient accumulated on this leaf by backward passes so far.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.lock().unwrap().clone()
    }

    /// Clears the accumulated gradient.
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap() = None;
    }

    /// A new leaf with the same value and no history.
    pub fn detach(&self) -> Var {
        Var::constant(self.value())
    }

    /// The value of a one-element `Var`.
    pub fn item(&self) -> Result<f64> {
        self.value().item()
    }

    /// Backpropagates from this one-element value (seed gradient 1).
    pub fn backward(&self) -> Result<()> {
        if self.value().numel() != 1 {
            return Err(TensorError::shape(
                "backward",
                "a one-element output (use backward_with for others)",
                self.shape(),
            ));
        }
        let value = self.value();
        let seed = Tensor::ones(self.shape(), value.dtype())?.to_device(value.device())?;
        self.backward_with(&seed)
    }

    /// Backpropagates `grad_output` (shaped like this value), accumulating into the leaves.
    pub fn backward_with(&self, grad_output: &Tensor) -> Result<()> {
        grad_output.check_shape("backward", self.shape())?;
        if !self.requires_grad() {
            return Err(TensorError::invalid(
                "backward",
                "expected an output that requires grad, found one with no trainable inputs",
            ));
        }
        let mut pending: HashMap<u64, Tensor> = HashMap::from([(self.0.id, grad_output.clone())]);
        let mut sections = ditmoe_tensor::profile::BackwardSections::start();
        for node in self.reverse_topological_order() {
            let Some(grad) = pending.remove(&node.0.id) else {
                continue;
            };
            if node.is_leaf() {
                let mut slot = node.0.grad.lock().unwrap();
                *slot = Some(match slot.take() {
                    Some(previous) => previous.add(&grad)?,
                    None => grad,
                });
                continue;
            }
            let op = node.0.op.unwrap_or("?");
            let backward = node.0.backward.lock().unwrap().take().ok_or_else(|| {
                TensorError::invalid("backward", format!("expected a fresh graph, but `{op}` was already backpropagated through and its saved tensors freed; run the forward pass again"))
            })?;
            sections.enter(node.0.section);
            let parent_grads = backward(&grad)?;
            assert_eq!(
                parent_grads.len(),
                node.0.parents.len(),
                "backward of `{op}` returned a wrong number of gradients"
            );
            for (parent, g) in node.0.parents.iter().zip(parent_grads) {
                let Some(g) = g.filter(|_| parent.requires_grad()) else {
                    continue;
                };
                assert_eq!(
                    g.shape(),
                    parent.shape(),
                    "backward of `{op}` returned a gradient of the wrong shape"
                );
                let total = match pending.remove(&parent.0.id) {
                    Some(previous) => previous.add(&g)?,
                    None => g,
                };
                pending.insert(parent.0.id, total);
            }
        }
        Ok(())
    }

    /// Nodes that require grad and are reachable from `self`, each after every node that uses it.
    fn reverse_topological_order(&self) -> Vec<Var> {
        let mut order = Vec::new();
        let mut visited = HashSet::new();
        // Iterative post-order DFS: (node, parents already pushed?).
        let mut stack = vec![(self.clone(), false)];
        while let Some((node, expanded)) = stack.pop() {
            if expanded {
                order.push(node);
                continue;
            }
            if !visited.insert(node.0.id) {
                continue;
            }
            stack.push((node.clone(), true));
            for parent in node.0.parents.iter().filter(|p| p.requires_grad()) {
                if !visited.contains(&parent.0.id) {
                    stack.push((parent.clone(), false));
                }
            }
        }
        order.reverse();
        order
    }
}

/// A leaf's value, writable: see [`Var::value_mut`].
pub struct ValueMut<'a> {
    value: RwLockWriteGuard<'a, Tensor>,
    shape: &'a [usize],
}

impl std::ops::Deref for ValueMut<'_> {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.value
    }
}

impl std::ops::DerefMut for ValueMut<'_> {
    fn deref_mut(&mut self) -> &mut Tensor {
        &mut self.value
    }
}

impl Drop for ValueMut<'_> {
    fn drop(&mut self) {
        debug_assert_eq!(
            self.value.shape(),
            self.shape,
            "an in-place update changed a leaf's shape"
        );
    }
}

impl Drop for Node {
    /// Unlinks long chains iteratively so dropping a deep graph cannot overflow the stack.
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.parents);
        while let Some(var) = stack.pop() {
            if let Ok(mut node) = Arc::try_unwrap(var.0) {
                stack.append(&mut node.parents);
            }
        }
    }
}
