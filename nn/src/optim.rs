//! Training utilities: AdamW (Loshchilov & Hutter, 2019), gradient clipping by global norm,
//! learning-rate warmup with constant or cosine decay, and an exponential moving average of
//! the weights.

use crate::validate::Field;
use ditmoe_autograd::Var;
use ditmoe_tensor::ops::optim::{AdamWHyper, AdamWMoments, ParamUpdate};
use ditmoe_tensor::{Result, Tensor, TensorError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_eps() -> f64 {
    1e-8
}

/// `[β1, β2]`, refusing an array of any other length (a tuple would drop a third element).
fn two_betas<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<(f64, f64), D::Error> {
    match Vec::<f64>::deserialize(deserializer)?[..] {
        [beta1, beta2] => Ok((beta1, beta2)),
        ref other => Err(serde::de::Error::invalid_length(
            other.len(),
            &"betas = [β1, β2], two numbers",
        )),
    }
}

/// AdamW hyper-parameters (PyTorch's defaults, but DiT's weight decay of 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    #[serde(default = "default_betas", deserialize_with = "two_betas")]
    pub betas: (f64, f64),
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// β1, β2 in [0, 1), ε in (0, 1], weight decay in [0, 1] (with lr <= 1 the decay factor
    /// 1 − lr·λ stays in [0, 1]); messages name the field under `at`.
    pub fn validate_at(&self, at: &Field) -> std::result::Result<(), String> {
        let betas = at.at("betas");
        betas.index(0).fraction(self.betas.0)?;
        betas.index(1).fraction(self.betas.1)?;
        let eps = at.at("eps");
        eps.positive(self.eps)?;
        eps.at_most(self.eps, 1.0)?;
        at.at("weight_decay").in_range(self.weight_decay, 0.0, 1.0)
    }
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            betas: default_betas(),
            eps: default_eps(),
            weight_decay: 0.0,
        }
    }
}

/// AdamW with decoupled weight decay. For each parameter p with gradient g (after scaling):
/// p ← p·(1 − lr·λ); m ← β1·m + (1 − β1)·g; v ← β2·v + (1 − β2)·g²;
/// p ← p − lr · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε).
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken so far (t above).
    pub step: u64,
    /// First and second moments by parameter name.
    pub moments: BTreeMap<String, (Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// Moves the moments to `device` (with the parameters they follow).
    pub fn to_device(&mut self, device: ditmoe_tensor::Device) -> Result<()> {
        for (m, v) in self.moments.values_mut() {
            *m = m.to_device(device)?;
            *v = v.to_device(device)?;
        }
        Ok(())
    }

    /// One update of every parameter that has a gradient, the gradients multiplied by
    /// `grad_scale` first (the clipping factor), and — given an [`Ema`] — the EMA update of
    /// every parameter after it. [`Tensor::optimizer_step`] does it all in place, in one pass
    /// over all parameters together on the CPU (composed from one AdamW kernel and a lerp per
    /// parameter on a GPU). The step writes into the parameters' buffers: drop the graph of
    /// the step first, or every weight it holds is copied instead (copy on write).
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        lr: f64,
        grad_scale: f64,
        ema: Option<&mut Ema>,
    ) -> Result<()> {
        self.step += 1;
        let (beta1, beta2) = self.config.betas;
        let hyper = AdamWHyper {
            lr,
            beta1,
            beta2,
            eps: self.config.eps,
            weight_decay: self.config.weight_decay,
            grad_scale,
            step: self.step,
        };
        let grads: Vec<Option<Tensor>> = params.iter().map(|(_, p)| p.grad()).collect();
        for ((name, _), grad) in params.iter().zip(&grads) {
            if let (Some(grad), false) = (grad, self.moments.contains_key(name)) {
                let zeros = (grad.zeros_like()?, grad.zeros_like()?);
                self.moments.insert(name.clone(), zeros);
            }
        }
        let ema_decay = ema.as_ref().map_or(0.0, |e| e.decay);
        let mut shadows: HashMap<&str, &mut Tensor> = match ema {
            Some(ema) => ema.shadows_of(params),
            None => HashMap::new(),
        };
        let mut moments: HashMap<&str, &mut (Tensor, Tensor)> = self
            .moments
            .iter_mut()
            .map(|(name, pair)| (name.as_str(), pair))
            .collect();
        let mut values = params
            .iter()
            .map(|(_, p)| p.value_mut())
            .collect::<Result<Vec<_>>>()?;
        let mut updates = Vec::with_capacity(params.len());
        for (((name, _), value), grad) in params.iter().zip(&mut values).zip(&grads) {
            let adam = match grad {
                Some(grad) => {
                    let (m, v) = moments.remove(name.as_str()).ok_or_else(|| {
                        TensorError::invalid("AdamW", format!("parameter `{name}` listed twice"))
                    })?;
                    Some(AdamWMoments { grad, m, v })
                }
                None => None,
            };
            updates.push(ParamUpdate {
                param: value,
                adam,
                ema: shadows.remove(name.as_str()),
            });
        }
        Tensor::optimizer_step(&mut updates, &hyper, ema_decay)
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`), for checkpoints.
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.moments
            .iter()
            .flat_map(|(n, (m, v))| [(format!("m.{n}"), m.clone()), (format!("v.{n}"), v.clone())])
            .collect()
    }

    /// Restores the moments written by [`AdamW::state_dict`] and the step count. Every
    /// parameter of `params` must have both moments, of its shape, and every moment must
    /// belong to a parameter: a moment left out would silently restart from zero.
    pub fn load_state_dict(
        &mut self,
        params: &[(String, Var)],
        state: &BTreeMap<String, Tensor>,
        step: u64,
    ) -> Result<()> {
        let invalid = |problem: String| TensorError::invalid("optimizer state", problem);
        let mut moments = BTreeMap::new();
        for (name, param) in params {
            let moment = |kind: &str| {
                let key = format!("{kind}.{name}");
                let value = state
                    .get(&key)
                    .ok_or_else(|| invalid(format!("missing `{key}`")))?;
                if value.shape() != param.shape() {
                    return Err(invalid(format!(
                        "`{key}` has shape {:?}, the parameter {:?}",
                        value.shape(),
                        param.shape()
                    )));
                }
                Ok(value.clone())
            };
            moments.insert(name.clone(), (moment("m")?, moment("v")?));
        }
        let belongs = |key: &str| {
            let name = key.strip_prefix("m.").or_else(|| key.strip_prefix("v."));
            name.is_some_and(|name| moments.contains_key(name))
        };
        if let Some(extra) = state.keys().find(|key| !belongs(key)) {
            return Err(invalid(format!("`{extra}` is the moment of no parameter")));
        }
        self.moments = moments;
        self.step = step;
        Ok(())
    }
}

/// Each gradient's sum of squares (of `Module::named_gradients`: one per checkpoint tensor, so
/// a stacked expert weight counts expert by expert), a one-element tensor left on the
/// gradient's device, in order: the parts of the global gradient norm. They stay where they are so that
/// the caller can bring them to the host with whatever else the step needs in one download
/// (on a GPU, the step's one wait for the device), then add them with [`global_norm`].
pub fn gradient_sums_of_squares(gradients: &[(String, Tensor)]) -> Result<Vec<Tensor>> {
    gradients
        .iter()
        .map(|(_, g)| g.sum_of_squares()?.reshape(&[1]))
        .collect()
}

/// The global L2 norm of all gradients from their sums of squares, added on the host in f64.
pub fn global_norm(sums_of_squares: &[f64]) -> f64 {
    sums_of_squares.iter().sum::<f64>().sqrt()
}

/// min(1, max_norm / norm): what clipping by global norm multiplies the gradients by
/// (1 when `max_norm` is 0, clipping off).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / norm
    } else {
        1.0
    }
}

/// Learning-rate schedule after a linear warmup from 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LrDecay {
    #[default]
    Constant,
    /// Cosine from the peak to `min_lr` at the last step.
    Cosine { min_lr: f64 },
}

impl LrDecay {
    /// A cosine's `min_lr` lies in [0, `peak`]; the message names the field under `at`.
    pub fn validate_at(&self, at: &Field, peak: f64) -> std::result::Result<(), String> {
        match *self {
            LrDecay::Constant => Ok(()),
            LrDecay::Cosine { min_lr } => at.at("cosine").at("min_lr").in_range(min_lr, 0.0, peak),
        }
    }
}

/// The learning rate of step `step` (0-based) of `total` with `warmup` warmup steps.
pub fn learning_rate(peak: f64, step: u64, warmup: u64, total: u64, decay: LrDecay) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    match decay {
        LrDecay::Constant => peak,
        LrDecay::Cosine { min_lr } => {
            let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
            min_lr
                + 0.5 * (peak - min_lr) * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
        }
    }
}

/// Exponential moving average of parameters: ema ← decay·ema + (1 − decay)·p.
pub struct Ema {
    pub decay: f64,
    pub shadow: BTreeMap<String, Tensor>,
}

impl Ema {
    /// Moves the shadow weights to `device` (with the model they follow).
    pub fn to_device(&mut self, device: ditmoe_tensor::Device) -> Result<()> {
        for value in self.shadow.values_mut() {
            *value = value.to_device(device)?;
        }
        Ok(())
    }

    /// Starts as a copy of the parameters.
    pub fn new(params: &[(String, Var)], decay: f64) -> Self {
        Ema {
            decay,
            shadow: params.iter().map(|(n, p)| (n.clone(), p.value())).collect(),
        }
    }

    /// Each parameter's shadow by name, for [`AdamW::step`]; a parameter without one (new
    /// since [`Ema::new`]) starts from its current value.
    fn shadows_of(&mut self, params: &[(String, Var)]) -> HashMap<&str, &mut Tensor> {
        for (name, p) in params {
            if !self.shadow.contains_key(name) {
                self.shadow.insert(name.clone(), p.value());
            }
        }
        self.shadow
            .iter_mut()
            .map(|(name, value)| (name.as_str(), value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ditmoe_tensor::DType;

    #[test]
    fn adamw_matches_a_hand_computed_step() {
        let p = Var::parameter(Tensor::from_vec(vec![1.0f64, -2.0], &[2]).unwrap());
        // loss = 3·p0 − 2·p1 → g = (3, −2)
        p.mul(&Var::constant(
            Tensor::from_vec(vec![3.0, -2.0], &[2]).unwrap(),
        ))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
        let params = vec![("w".to_string(), p.clone())];
        let mut opt = AdamW::new(AdamWConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.1,
        });
        opt.step(&params, 0.01, 1.0, None).unwrap();
        // Step 1: m̂ = g, v̂ = g², so the Adam step is lr·g/(|g| + ε); decay first scales p by 1 − lr·λ.
        let expected = [
            1.0 * (1.0 - 0.001) - 0.01 * 3.0 / (3.0 + 1e-8),
            -2.0 * (1.0 - 0.001) - 0.01 * -2.0 / (2.0 + 1e-8),
        ];
        let got = p.value().to_vec::<f64>().unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-15, "{got:?} vs {expected:?}");
        }
        // Step 2 with the same gradient: m = (1 − 0.9²)·g, v = (1 − 0.999²)·g².
        opt.step(&params, 0.01, 1.0, None).unwrap();
        let (m, v) = &opt.moments["w"];
        assert!((m.to_vec::<f64>().unwrap()[0] - 3.0 * (1.0 - 0.9f64.powi(2))).abs() < 1e-12);
        assert!((v.to_vec::<f64>().unwrap()[0] - 9.0 * (1.0 - 0.999f64.powi(2))).abs() < 1e-12);
    }

    #[test]
    fn loading_moments_refuses_a_missing_or_misshapen_one() {
        let p = Var::parameter(Tensor::from_vec(vec![1.0f64, -2.0], &[2]).unwrap());
        p.sum_all().unwrap().backward().unwrap();
        let params = vec![("w".to_string(), p)];
        let mut opt = AdamW::new(AdamWConfig::default());
        opt.step(&params, 0.01, 1.0, None).unwrap();
        let state = opt.state_dict();
        let mut restored = AdamW::new(AdamWConfig::default());
        restored.load_state_dict(&params, &state, 1).unwrap();
        assert_eq!(
            restored.moments["w"].1.to_vec_f64(),
            opt.moments["w"].1.to_vec_f64()
        );
        let load = |state: &BTreeMap<String, Tensor>| {
            AdamW::new(AdamWConfig::default())
                .load_state_dict(&params, state, 1)
                .unwrap_err()
                .to_string()
        };
        let mut missing = state.clone();
        missing.remove("v.w");
        assert!(load(&missing).contains("missing `v.w`"));
        let mut misshapen = state.clone();
        misshapen.insert("m.w".into(), Tensor::zeros(&[3], DType::F64).unwrap());
        assert!(load(&misshapen).contains("`m.w` has shape [3], the parameter [2]"));
        let mut extra = state;
        extra.insert("m.gone".into(), Tensor::zeros(&[2], DType::F64).unwrap());
        assert!(load(&extra).contains("`m.gone` is the moment of no parameter"));
    }

    #[test]
    fn clipping_and_schedules() {
        let p = Var::parameter(Tensor::from_vec(vec![0.0f64; 2], &[2]).unwrap());
        p.mul(&Var::constant(
            Tensor::from_vec(vec![3.0, 4.0], &[2]).unwrap(),
        ))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
        let squares: Vec<f64> = gradient_sums_of_squares(&[("p".into(), p.grad().unwrap())])
            .unwrap()
            .iter()
            .flat_map(Tensor::to_vec_f64)
            .collect();
        let norm = global_norm(&squares);
        assert_eq!((norm, clip_factor(norm, 1.0)), (5.0, 0.2));
        assert_eq!(clip_factor(norm, 0.0), 1.0, "0 turns clipping off");
        assert_eq!(learning_rate(1.0, 0, 4, 100, LrDecay::Constant), 0.25);
        assert_eq!(learning_rate(1.0, 50, 4, 100, LrDecay::Constant), 1.0);
        assert!(
            (learning_rate(1.0, 99, 0, 100, LrDecay::Cosine { min_lr: 0.1 }) - 0.1).abs() < 1e-3
        );
    }

    #[test]
    fn ema_moves_toward_the_parameters() {
        let p = Var::parameter(Tensor::from_vec(vec![0.0f32], &[1]).unwrap());
        let params = vec![("p".to_string(), p.clone())];
        let mut ema = Ema::new(&params, 0.9);
        // No gradient: the parameter stays, the shadow moves a tenth of the way to it.
        p.set_value(Tensor::full(&[1], 1.0, DType::F32).unwrap())
            .unwrap();
        let mut opt = AdamW::new(AdamWConfig::default());
        opt.step(&params, 0.1, 1.0, Some(&mut ema)).unwrap();
        assert_eq!(p.value().item().unwrap(), 1.0);
        assert!((ema.shadow["p"].item().unwrap() - 0.1).abs() < 1e-7);
        // With a gradient the shadow follows the updated parameter: 0.1 + 0.1·(p' − 0.1).
        p.mul_scalar(2.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&params, 0.1, 1.0, Some(&mut ema)).unwrap();
        let updated = p.value().item().unwrap();
        assert!(updated < 1.0, "a step down the gradient");
        let expected = 0.1 + 0.1 * (updated - 0.1);
        assert!((ema.shadow["p"].item().unwrap() - expected).abs() < 1e-7);
    }
}
