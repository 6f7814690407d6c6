//! Lookup tables: `Embedding`, and DiT's `LabelEmbedder` with classifier-free-guidance dropout.

use crate::init;
use crate::module::{Module, Visitor};
use ditmoe_autograd::Var;
use ditmoe_tensor::{DType, Result, SeededRng, Tensor};
use rand::Rng;

/// `weight[i]` for each index i.
pub struct Embedding {
    pub weight: Var,
}

impl Embedding {
    /// N(0, 0.02) rows, as DiT initialises its label table.
    pub fn new(count: usize, dim: usize, rng: &mut SeededRng) -> Result<Self> {
        Ok(Embedding {
            weight: Var::parameter(init::normal(&[count, dim], 0.02, rng)?),
        })
    }

    /// `[..] i64 → [.., dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Var> {
        let rows = self.weight.index_select(0, &ids.flatten()?)?;
        rows.reshape(&[ids.shape(), &[self.weight.shape()[1]]].concat())
    }
}

impl Module for Embedding {
    fn visit(&self, v: &mut Visitor) {
        v.param("weight", &self.weight);
    }
}

/// Class-label embedding with an extra "null" row (index `num_classes`) used for
/// classifier-free guidance; in training each label is replaced by null with probability
/// `dropout_prob` (Ho & Salimans, 2022).
pub struct LabelEmbedder {
    pub embedding_table: Embedding,
    pub num_classes: usize,
    pub dropout_prob: f64,
}

impl LabelEmbedder {
    pub fn new(
        num_classes: usize,
        dim: usize,
        dropout_prob: f64,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        let rows = num_classes + usize::from(dropout_prob > 0.0);
        Ok(LabelEmbedder {
            embedding_table: Embedding::new(rows, dim, rng)?,
            num_classes,
            dropout_prob,
        })
    }

    /// Embeds `labels` (i64); with `dropout_rng` (training) some become the null class (drawn
    /// on the host, so every device makes the same draws).
    pub fn forward(&self, labels: &Tensor, dropout_rng: Option<&mut SeededRng>) -> Result<Var> {
        let labels = match dropout_rng {
            Some(rng) if self.dropout_prob > 0.0 => {
                let dropped: Vec<i64> = labels
                    .to_device(ditmoe_tensor::Device::Cpu)?
                    .to_vec::<i64>()?
                    .into_iter()
                    .map(|y| {
                        if rng.random_bool(self.dropout_prob) {
                            self.num_classes as i64
                        } else {
                            y
                        }
                    })
                    .collect();
                Tensor::from_vec(dropped, labels.shape())?.to_device(labels.device())?
            }
            _ => labels.clone(),
        };
        labels.check_dtype("label embedder", DType::I64)?;
        self.embedding_table.forward(&labels)
    }
}

impl Module for LabelEmbedder {
    fn visit(&self, v: &mut Visitor) {
        v.child("embedding_table", &self.embedding_table);
    }
}
