//! The feature network of the quality score: a small MLP classifier trained on the ablation's
//! own dataset, playing the role Inception-v3 plays for FID (Heusel et al., 2017). Its
//! penultimate activations are the features whose Fréchet distance compares generated and
//! real images; its predictions give the class accuracy of generated images.

use crate::analysis::{frechet_distance, mean_and_covariance};
use crate::data::{batch, Dataset};
use crate::train::step_rng;
use anyhow::{anyhow, Context, Result};
use ditmoe_autograd::{no_grad, Var};
use ditmoe_nn::checkpoint::{read_tensors, write_tensors};
use ditmoe_nn::layers::Linear;
use ditmoe_nn::module::{Module, Visitor};
use ditmoe_nn::optim::{learning_rate, AdamW, AdamWConfig, LrDecay};
use ditmoe_tensor::{seeded_rng, DType, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The classifier's size and training budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    pub hidden: usize,
    /// Width of the feature layer (the Fréchet distance's dimension).
    pub features: usize,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
}

impl ClassifierConfig {
    /// Checks the sizes (features at most 1024: the Fréchet distance factors a
    /// features × features covariance) and the learning rate; messages name the field under `at`.
    pub fn validate_at(&self, at: &ditmoe_nn::Field) -> std::result::Result<(), String> {
        at.at("hidden").positive_count(self.hidden, 65_536)?;
        at.at("features").positive_count(self.features, 1024)?;
        at.at("steps").positive_count(self.steps, 10_000_000)?;
        at.at("batch_size")
            .positive_count(self.batch_size, 65_536)?;
        let lr = at.at("lr");
        lr.positive(self.lr)?;
        lr.at_most(self.lr, 1.0)
    }
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            hidden: 256,
            features: 64,
            steps: 600,
            batch_size: 128,
            lr: 2e-3,
        }
    }
}

/// pixels → GELU(fc1) → GELU(fc2) = features → head = class logits.
pub struct Classifier {
    pub fc1: Linear,
    pub fc2: Linear,
    pub head: Linear,
}

impl Module for Classifier {
    fn visit(&self, v: &mut Visitor) {
        v.child("fc1", &self.fc1);
        v.child("fc2", &self.fc2);
        v.child("head", &self.head);
    }
}

/// Features and predicted classes of a set of images.
pub struct Judgement {
    pub features: Vec<Vec<f64>>,
    pub predictions: Vec<usize>,
}

impl Classifier {
    pub fn new(
        pixels: usize,
        classes: usize,
        config: &ClassifierConfig,
        seed: u64,
    ) -> Result<Self> {
        let rng = &mut seeded_rng(seed);
        Ok(Classifier {
            fc1: Linear::new(pixels, config.hidden, true, rng)?,
            fc2: Linear::new(config.hidden, config.features, true, rng)?,
            head: Linear::new(config.features, classes, true, rng)?,
        })
    }

    /// (features, logits) of images `[N, C, H, W]`.
    pub fn forward(&self, images: &Var) -> Result<(Var, Var)> {
        let n = images.shape()[0];
        let flat = images.reshape(&[n, images.shape()[1..].iter().product()])?;
        let features = self
            .fc2
            .forward(&self.fc1.forward(&flat)?.gelu_tanh()?)?
            .gelu_tanh()?;
        let logits = self.head.forward(&features)?;
        Ok((features, logits))
    }

    /// Features and predictions of `images`, in chunks, without building a graph.
    pub fn judge(&self, images: &Tensor) -> Result<Judgement> {
        let n = images.shape()[0];
        let mut judgement = Judgement {
            features: Vec::with_capacity(n),
            predictions: Vec::with_capacity(n),
        };
        for start in (0..n).step_by(256) {
            let chunk = images.narrow(0, start, 256.min(n - start))?;
            let (features, logits) = no_grad(|| self.forward(&Var::constant(chunk)))?;
            let width = features.shape()[1];
            let values = features.value().to_vec_f64();
            judgement
                .features
                .extend(values.chunks(width).map(<[f64]>::to_vec));
            let classes = logits.value().argmax(1, false)?.to_vec::<i64>()?;
            judgement
                .predictions
                .extend(classes.into_iter().map(|c| c as usize));
        }
        Ok(judgement)
    }

    pub fn save(&self, path: &Path, meta: &ClassifierMeta) -> Result<()> {
        let json = serde_json::to_string(meta).expect("meta serialises");
        write_tensors(
            path,
            &self.state_dict(),
            HashMap::from([("classifier".to_string(), json)]),
        )?;
        Ok(())
    }

    /// Loads a classifier saved by [`Classifier::save`].
    pub fn load(path: &Path) -> Result<(Self, ClassifierMeta)> {
        let file = read_tensors(path)?;
        let json = file
            .metadata
            .get("classifier")
            .ok_or_else(|| anyhow!("{}: no classifier metadata", path.display()))?;
        let meta: ClassifierMeta =
            serde_json::from_str(json).with_context(|| path.display().to_string())?;
        let model = Classifier::new(meta.pixels, meta.classes, &meta.config, 0)?;
        model
            .load_state_dict(&file.tensors)
            .with_context(|| path.display().to_string())?;
        Ok((model, meta))
    }
}

/// What is stored with the classifier's weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierMeta {
    pub pixels: usize,
    pub classes: usize,
    pub config: ClassifierConfig,
    pub seed: u64,
    /// Accuracy on held-out real images.
    pub accuracy: f64,
}

/// Which dataset indices train the classifier and which are held out: the last `held_out`
/// images are never trained on.
fn split(data: &dyn Dataset, held_out: usize) -> (usize, std::ops::Range<usize>) {
    let held_out = held_out.min(data.len() / 2);
    (data.len() - held_out, data.len() - held_out..data.len())
}

/// Trains the classifier with cross-entropy and AdamW; returns it with its held-out accuracy.
pub fn train_classifier(
    data: &dyn Dataset,
    config: &ClassifierConfig,
    held_out: usize,
    seed: u64,
) -> Result<(Classifier, ClassifierMeta)> {
    let (c, h, w) = data.image_shape();
    let classes = data.num_classes();
    let model = Classifier::new(c * h * w, classes, config, seed)?;
    let params = model.named_parameters();
    let mut optimizer = AdamW::new(AdamWConfig::default());
    let (train_len, _) = split(data, held_out);
    for step in 0..config.steps {
        let rng = &mut step_rng(seed ^ 0xC1A5_51F1, step);
        let indices: Vec<usize> = (0..config.batch_size)
            .map(|_| rng.random_range(0..train_len))
            .collect();
        let (images, labels) = batch(data, &indices, false, rng)?;
        let (_, logits) = model.forward(&Var::constant(images))?;
        let targets = Var::constant(labels.one_hot(classes, DType::F32)?);
        let loss = logits
            .log_softmax(1)?
            .mul(&targets)?
            .sum_all()?
            .mul_scalar(-1.0 / config.batch_size as f64)?;
        loss.backward()?;
        // Cosine decay to a tenth over the run, no warmup.
        let decay = LrDecay::Cosine {
            min_lr: 0.1 * config.lr,
        };
        let lr = learning_rate(config.lr, step, 0, config.steps, decay);
        optimizer.step(&params, lr, 1.0, None)?;
        params.iter().for_each(|(_, p)| p.zero_grad());
    }
    let (images, labels) = real_images(data, held_out)?;
    let predictions = model.judge(&images)?.predictions;
    let meta = ClassifierMeta {
        pixels: c * h * w,
        classes,
        config: *config,
        seed,
        accuracy: accuracy(&predictions, &labels),
    };
    Ok((model, meta))
}

/// The held-out real images `[N, C, H, W]` and their labels.
pub fn real_images(data: &dyn Dataset, held_out: usize) -> Result<(Tensor, Vec<usize>)> {
    let (_, range) = split(data, held_out);
    let indices: Vec<usize> = range.collect();
    let (images, labels) = batch(data, &indices, false, &mut seeded_rng(0))?;
    let labels = labels.to_vec::<i64>()?;
    Ok((images, labels.into_iter().map(|l| l as usize).collect()))
}

/// Fraction of `predictions` equal to `labels`.
pub fn accuracy(predictions: &[usize], labels: &[usize]) -> f64 {
    let hits = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    hits as f64 / labels.len().max(1) as f64
}

/// Feature mean and covariance of the real images: the reference of every quality score.
pub struct Reference {
    pub mean: Vec<f64>,
    pub covariance: Vec<Vec<f64>>,
}

impl Reference {
    pub fn of(classifier: &Classifier, real: &Tensor) -> Result<Self> {
        let (mean, covariance) = mean_and_covariance(&classifier.judge(real)?.features);
        Ok(Reference { mean, covariance })
    }
}

/// The quality score of a set of generated images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Fréchet distance between generated and real feature distributions (lower is better).
    pub frechet_distance: f64,
    /// Fraction of images the classifier assigns to the class they were generated for.
    pub class_accuracy: f64,
}

/// Scores `images` generated for `labels` against `reference`.
pub fn score(
    classifier: &Classifier,
    reference: &Reference,
    images: &Tensor,
    labels: &[usize],
) -> Result<Quality> {
    let judgement = classifier.judge(images)?;
    let (mean, covariance) = mean_and_covariance(&judgement.features);
    Ok(Quality {
        frechet_distance: frechet_distance(
            &mean,
            &covariance,
            &reference.mean,
            &reference.covariance,
        ),
        class_accuracy: accuracy(&judgement.predictions, labels),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shapes::Shapes;

    #[test]
    fn the_classifier_learns_the_shapes_and_scores_real_images_as_real() {
        let data = Shapes::new(3, 8, 2000);
        let config = ClassifierConfig {
            hidden: 64,
            features: 16,
            steps: 150,
            batch_size: 64,
            lr: 3e-3,
        };
        let (classifier, meta) = train_classifier(&data, &config, 400, 1).unwrap();
        assert!(meta.accuracy > 0.5, "held-out accuracy {}", meta.accuracy);
        let (real, labels) = real_images(&data, 400).unwrap();
        let reference = Reference::of(&classifier, &real).unwrap();
        let itself = score(&classifier, &reference, &real, &labels).unwrap();
        assert!(itself.frechet_distance.abs() < 1e-6);
        assert_eq!(itself.class_accuracy, meta.accuracy);
        let noise =
            Tensor::rand_uniform(real.shape(), -1.0, 1.0, DType::F32, &mut seeded_rng(9)).unwrap();
        let bad = score(&classifier, &reference, &noise, &labels).unwrap();
        assert!(bad.frechet_distance > 1.0, "noise is far: {bad:?}");

        let path =
            std::env::temp_dir().join(format!("ditmoe-clf-{}.safetensors", std::process::id()));
        classifier.save(&path, &meta).unwrap();
        let (loaded, loaded_meta) = Classifier::load(&path).unwrap();
        assert_eq!(loaded_meta, meta);
        assert_eq!(
            loaded.judge(&real).unwrap().predictions,
            classifier.judge(&real).unwrap().predictions
        );
        std::fs::remove_file(path).unwrap();
    }
}
