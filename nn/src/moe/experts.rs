//! The routed experts of a MoE layer, each projection one parameter stacked over the experts:
//! weights `[E, out, in]` (PyTorch's `[out, in]` per expert) and biases `[E, out]`, used as they
//! are by the grouped GEMM. Checkpoints list them per expert under DiT-MoE's names
//! (`experts.{i}.up_proj.weight`, see `Visitor::stacked`).

use crate::layers::{Linear, Mlp, SwiGlu};
use crate::module::{Module, Visitor};
use crate::moe::config::ExpertKind;
use ditmoe_autograd::Var;
use ditmoe_tensor::{GroupSizes, Result, SeededRng, Tensor};
use std::collections::BTreeMap;

/// One expert network (the shared expert, or one routed expert on its own): a SwiGLU or GELU
/// MLP.
pub enum FeedForward {
    SwiGlu(SwiGlu),
    Gelu(Mlp),
}

impl FeedForward {
    pub fn new(kind: ExpertKind, dim: usize, hidden: usize, rng: &mut SeededRng) -> Result<Self> {
        Ok(match kind {
            ExpertKind::SwiGlu => FeedForward::SwiGlu(SwiGlu::new(dim, hidden, rng)?),
            ExpertKind::GeluMlp => FeedForward::Gelu(Mlp::new(dim, hidden, rng)?),
        })
    }

    pub fn forward(&self, x: &Var) -> Result<Var> {
        match self {
            FeedForward::SwiGlu(m) => m.forward(x),
            FeedForward::Gelu(m) => m.forward(x),
        }
    }
}

impl Module for FeedForward {
    fn visit(&self, v: &mut Visitor) {
        match self {
            FeedForward::SwiGlu(m) => m.visit(v),
            FeedForward::Gelu(m) => m.visit(v),
        }
    }
}

/// A linear projection per expert: `weight [E, out, in]`, optional `bias [E, out]`.
pub struct StackedLinear {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl StackedLinear {
    /// Rows sorted by expert (`group_sizes` per expert, `expert_of` each row's expert) through
    /// their expert's projection: one grouped GEMM, plus each row's expert bias.
    pub fn forward(&self, x: &Var, group_sizes: &GroupSizes, expert_of: &Tensor) -> Result<Var> {
        let y = Var::grouped_matmul(x, group_sizes, &self.weight)?;
        match &self.bias {
            Some(bias) => y.add(&bias.index_select(0, expert_of)?),
            None => Ok(y),
        }
    }

    /// Expert `i`'s projection as a standalone layer holding a copy of its slice.
    fn expert(&self, i: usize) -> Result<Linear> {
        let slice = |var: &Var| -> Result<Var> {
            Ok(Var::parameter(var.value().narrow(0, i, 1)?.squeeze(0)?))
        };
        Ok(Linear {
            weight: slice(&self.weight)?,
            bias: self.bias.as_ref().map(slice).transpose()?,
        })
    }
}

/// All routed experts of a layer, of one kind (so an ablation compares routings only).
pub enum Experts {
    /// down(SiLU(gate(x)) ⊙ up(x)), no biases (DiT-MoE).
    SwiGlu {
        gate_proj: StackedLinear,
        up_proj: StackedLinear,
        down_proj: StackedLinear,
    },
    /// fc2(GELU(fc1(x))) with biases (EC-DiT).
    Gelu {
        fc1: StackedLinear,
        fc2: StackedLinear,
    },
}

impl Experts {
    /// `count` experts initialised one after another as standalone [`FeedForward`]s (the same
    /// draws as separate layers), then stacked once.
    pub fn new(
        kind: ExpertKind,
        dim: usize,
        hidden: usize,
        count: usize,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        let experts = (0..count)
            .map(|_| FeedForward::new(kind, dim, hidden, rng))
            .collect::<Result<Vec<_>>>()?;
        let mut slices: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
        for expert in &experts {
            for (name, value) in expert.state_dict() {
                slices.entry(name).or_default().push(value);
            }
        }
        let mut stacked = |name: &str| -> Result<Var> {
            let values = slices.remove(name).expect("every expert has the tensor");
            Ok(Var::parameter(Tensor::stack(
                &values.iter().collect::<Vec<_>>(),
                0,
            )?))
        };
        Ok(match kind {
            ExpertKind::SwiGlu => Experts::SwiGlu {
                gate_proj: StackedLinear {
                    weight: stacked("gate_proj.weight")?,
                    bias: None,
                },
                up_proj: StackedLinear {
                    weight: stacked("up_proj.weight")?,
                    bias: None,
                },
                down_proj: StackedLinear {
                    weight: stacked("down_proj.weight")?,
                    bias: None,
                },
            },
            ExpertKind::GeluMlp => Experts::Gelu {
                fc1: StackedLinear {
                    weight: stacked("fc1.weight")?,
                    bias: Some(stacked("fc1.bias")?),
                },
                fc2: StackedLinear {
                    weight: stacked("fc2.weight")?,
                    bias: Some(stacked("fc2.bias")?),
                },
            },
        })
    }

    /// Every expert over the rows sorted by expert (`group_sizes` per expert, `expert_of` each
    /// row's expert): one grouped GEMM per projection.
    pub fn forward(&self, x: &Var, group_sizes: &GroupSizes, expert_of: &Tensor) -> Result<Var> {
        match self {
            Experts::SwiGlu {
                gate_proj,
                up_proj,
                down_proj,
            } => {
                let gate = gate_proj.forward(x, group_sizes, expert_of)?;
                let up = up_proj.forward(x, group_sizes, expert_of)?;
                down_proj.forward(&gate.swiglu(&up)?, group_sizes, expert_of)
            }
            Experts::Gelu { fc1, fc2 } => {
                let hidden = fc1.forward(x, group_sizes, expert_of)?;
                fc2.forward(&hidden.gelu_tanh()?, group_sizes, expert_of)
            }
        }
    }

    /// Expert `i` as a standalone layer holding a copy of its weights (for reference
    /// computations).
    pub fn expert(&self, i: usize) -> Result<FeedForward> {
        Ok(match self {
            Experts::SwiGlu {
                gate_proj,
                up_proj,
                down_proj,
            } => FeedForward::SwiGlu(SwiGlu {
                gate_proj: gate_proj.expert(i)?,
                up_proj: up_proj.expert(i)?,
                down_proj: down_proj.expert(i)?,
            }),
            Experts::Gelu { fc1, fc2 } => FeedForward::Gelu(Mlp {
                fc1: fc1.expert(i)?,
                fc2: fc2.expert(i)?,
            }),
        })
    }

    /// The stacked parameters under one expert's names, in [`FeedForward`]'s visiting order.
    pub fn named_stacks(&self) -> Vec<(&'static str, &Var)> {
        match self {
            Experts::SwiGlu {
                gate_proj,
                up_proj,
                down_proj,
            } => [
                ("gate_proj.weight", &gate_proj.weight),
                ("up_proj.weight", &up_proj.weight),
                ("down_proj.weight", &down_proj.weight),
            ]
            .to_vec(),
            Experts::Gelu { fc1, fc2 } => {
                fn bias(l: &StackedLinear) -> &Var {
                    l.bias.as_ref().expect("GELU experts have biases")
                }
                vec![
                    ("fc1.weight", &fc1.weight),
                    ("fc1.bias", bias(fc1)),
                    ("fc2.weight", &fc2.weight),
                    ("fc2.bias", bias(fc2)),
                ]
            }
        }
    }
}
