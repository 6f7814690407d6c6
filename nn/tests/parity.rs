//! Parity with the official PyTorch code: forward outputs, losses and every parameter gradient
//! of small random DiT and DiT-MoE models exported to `tests/fixtures/` (see its README).

use ditmoe_autograd::Var;
use ditmoe_nn::checkpoint::{load_model, read_tensors};
use ditmoe_nn::{ForwardOptions, Module};
use ditmoe_tensor::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixture(model: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(model)
        .join(file)
}

/// ‖a − b‖ / ‖b‖.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_vec_f64(), b.to_vec_f64());
    let diff: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    diff / norm.max(1e-30)
}

/// The tensors of a fixture file.
fn tensors(model: &str, file: &str) -> BTreeMap<String, Tensor> {
    read_tensors(fixture(model, file)).unwrap().tensors
}

/// Every parameter gradient of `model` against the fixture's `grad.<name>` (to 1e-4
/// relative), and every one of those checked.
fn assert_gradients_match(name: &str, model: &ditmoe_nn::Dit, train: &BTreeMap<String, Tensor>) {
    let mut checked = 0;
    for (param, grad) in model.named_gradients() {
        let expected = &train[&format!("grad.{param}")];
        let err = relative_error(&grad, expected);
        assert!(
            err < 1e-4,
            "{name}: gradient of {param} differs by {err:.2e}"
        );
        checked += 1;
    }
    assert_eq!(
        checked,
        train.keys().filter(|k| k.starts_with("grad.")).count(),
        "{name}: every reference gradient checked"
    );
}

fn check_parity(name: &str) {
    let model = load_model(fixture(name, "weights.safetensors")).unwrap();
    let inputs = tensors(name, "inputs.safetensors");
    let (x, t, y) = (
        Var::constant(inputs["x"].clone()),
        &inputs["t"],
        &inputs["y"],
    );

    let expected = tensors(name, "eval.safetensors");
    let out = model
        .forward(&x, t, y, ForwardOptions::default())
        .unwrap()
        .out;
    let err = relative_error(&out.value(), &expected["out"]);
    assert!(err < 1e-5, "{name}: eval output differs by {err:.2e}");

    let train = tensors(name, "train.safetensors");
    let result = model.forward(&x, t, y, ForwardOptions::default()).unwrap();
    let target = Var::constant(inputs["target"].clone());
    let mse = result
        .out
        .sub(&target)
        .unwrap()
        .powf(2.0)
        .unwrap()
        .mean_all()
        .unwrap();
    let err =
        (mse.item().unwrap() - train["loss"].item().unwrap()).abs() / train["loss"].item().unwrap();
    assert!(err < 1e-5, "{name}: loss differs by {err:.2e}");
    let total = match (&result.aux_loss, train.get("aux_loss")) {
        (Some(aux), Some(expected)) => {
            let err =
                (aux.item().unwrap() - expected.item().unwrap()).abs() / expected.item().unwrap();
            assert!(
                err < 1e-5,
                "{name}: aux loss {} vs {}",
                aux.item().unwrap(),
                expected.item().unwrap()
            );
            mse.add(aux).unwrap()
        }
        (None, None) => mse,
        (ours, theirs) => panic!(
            "{name}: aux loss present here: {}, in the reference: {}",
            ours.is_some(),
            theirs.is_some()
        ),
    };
    total.backward().unwrap();
    assert_gradients_match(name, &model, &train);
}

#[test]
fn dense_dit_matches_the_reference() {
    check_parity("dit-dense");
}

#[test]
fn token_choice_ditmoe_matches_the_reference() {
    check_parity("ditmoe-token-choice");
}

/// The selection of a routing record as a 0/1 mask `[N·E]`, token-major (DiffMoE's `mask.l`
/// `[B, s, E]` flattened).
fn selection_mask(record: &ditmoe_nn::moe::RoutingRecord) -> Vec<f64> {
    let d = &record.decision;
    let mut mask = vec![0.0; d.num_tokens * d.num_experts];
    d.positions.iter().for_each(|&p| mask[p] = 1.0);
    mask
}

/// The thresholds `[E]` of block `index`'s capacity predictor.
fn thresholds(model: &ditmoe_nn::Dit, index: usize) -> Tensor {
    match &model.blocks[index].ffn {
        ditmoe_nn::dit::Ffn::Moe(moe) => moe.predictor.as_ref().unwrap().threshold.value(),
        ditmoe_nn::dit::Ffn::Dense(_) => panic!("block {index} is dense"),
    }
}

/// DiffMoE (KwaiVGI/DiffMoE's `models_DiffMoE.py`): in eval, the output with the stored
/// thresholds and which tokens each expert took (the counts from the predictor, the tokens by
/// router score); in train, the output, the global-pool selection, the predictor's BCE, the
/// thresholds after the forward's update, the official loss and every gradient.
#[test]
fn diffmoe_matches_the_reference() {
    let name = "diffmoe";
    let moe_blocks = [1, 3];
    let model = load_model(fixture(name, "weights.safetensors")).unwrap();
    let inputs = tensors(name, "inputs.safetensors");
    let (x, t, y) = (
        Var::constant(inputs["x"].clone()),
        &inputs["t"],
        &inputs["y"],
    );
    let options = |training| ForwardOptions {
        record_routing: true,
        training,
        ..ForwardOptions::default()
    };

    let eval = tensors(name, "eval.safetensors");
    let result = model.forward(&x, t, y, options(false)).unwrap();
    let err = relative_error(&result.out.value(), &eval["out"]);
    assert!(err < 1e-5, "eval output differs by {err:.2e}");
    for l in moe_blocks {
        let record = result.routing[l].as_ref().expect("a MoE block's record");
        let counts: Vec<f64> = record
            .decision
            .expert_counts()
            .iter()
            .map(|&c| c as f64)
            .collect();
        assert_eq!(
            counts,
            eval[&format!("count.{l}")].to_vec_f64(),
            "eval counts of block {l}"
        );
        assert_eq!(
            selection_mask(record),
            eval[&format!("mask.{l}")].to_vec_f64(),
            "eval mask of block {l}"
        );
    }

    let train = tensors(name, "train.safetensors");
    let result = model.forward(&x, t, y, options(true)).unwrap();
    let err = relative_error(&result.out.value(), &train["out"]);
    assert!(err < 1e-5, "train output differs by {err:.2e}");
    for l in moe_blocks {
        let record = result.routing[l].as_ref().expect("a MoE block's record");
        assert_eq!(
            selection_mask(record),
            train[&format!("mask.{l}")].to_vec_f64(),
            "train mask of block {l}"
        );
        let err = relative_error(&thresholds(&model, l), &train[&format!("threshold.{l}")]);
        assert!(
            err < 1e-6,
            "block {l}'s updated thresholds differ by {err:.2e}"
        );
    }
    // The repo's rectified-flow loss: the velocity MSE over the data half of the channels,
    // plus the predictors' weighted BCE (our aux loss).
    let data = result.out.narrow(1, 0, 4).unwrap();
    let target = Var::constant(inputs["target"].clone());
    let mse = data
        .sub(&target)
        .unwrap()
        .powf(2.0)
        .unwrap()
        .mean_all()
        .unwrap();
    let aux = result.aux_loss.expect("the predictors' loss");
    let loss = mse.add(&aux).unwrap();
    for (ours, theirs) in [(&mse, "mse"), (&aux, "cp_loss"), (&loss, "loss")] {
        let (ours, theirs_value) = (ours.item().unwrap(), train[theirs].item().unwrap());
        let err = (ours - theirs_value).abs() / theirs_value.abs();
        assert!(err < 1e-5, "{theirs}: {ours} vs {theirs_value}");
    }
    loss.backward().unwrap();
    assert_gradients_match(name, &model, &train);
}
