//! Parity with the official PyTorch code: forward outputs, losses and every parameter gradient
//! of small random DiT and DiT-MoE models exported to `tests/fixtures/` (see its README).

use ditmoe_autograd::Var;
use ditmoe_nn::checkpoint::{load_model, read_tensors};
use ditmoe_nn::{ForwardOptions, Module};
use ditmoe_tensor::Tensor;
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

fn check_parity(name: &str) {
    let model = load_model(fixture(name, "weights.safetensors")).unwrap();
    let inputs = read_tensors(fixture(name, "inputs.safetensors"))
        .unwrap()
        .tensors;
    let (x, t, y) = (
        Var::constant(inputs["x"].clone()),
        &inputs["t"],
        &inputs["y"],
    );

    let expected = read_tensors(fixture(name, "eval.safetensors"))
        .unwrap()
        .tensors;
    let out = model
        .forward(&x, t, y, ForwardOptions::default())
        .unwrap()
        .out;
    let err = relative_error(&out.value(), &expected["out"]);
    assert!(err < 1e-5, "{name}: eval output differs by {err:.2e}");

    let train = read_tensors(fixture(name, "train.safetensors"))
        .unwrap()
        .tensors;
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

#[test]
fn dense_dit_matches_the_reference() {
    check_parity("dit-dense");
}

#[test]
fn token_choice_ditmoe_matches_the_reference() {
    check_parity("ditmoe-token-choice");
}
