//! The semantics of the graph: what records, what accumulates, what is freed.

use ditmoe_autograd::{no_grad, Var};
use ditmoe_tensor::{DType, Tensor};

fn scalar(v: f64) -> Tensor {
    Tensor::from_vec(vec![v], &[1]).unwrap()
}

#[test]
fn gradients_of_a_shared_subexpression_add_up() {
    // y = x·x + x  →  dy/dx = 2x + 1
    let x = Var::parameter(scalar(3.0));
    let y = x.mul(&x).unwrap().add(&x).unwrap().sum_all().unwrap();
    y.backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![7.0]);
}

#[test]
fn gradients_accumulate_across_backward_calls_until_zeroed() {
    let x = Var::parameter(scalar(2.0));
    for _ in 0..3 {
        x.mul_scalar(5.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
    }
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![15.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
}

#[test]
fn no_grad_and_constants_record_nothing() {
    let x = Var::parameter(scalar(2.0));
    let y = no_grad(|| x.exp().unwrap());
    assert!(!y.requires_grad() && y.is_leaf());
    let c = Var::constant(scalar(1.0));
    assert!(c.exp().unwrap().is_leaf());
    assert!(c.exp().unwrap().sum_all().unwrap().backward().is_err());
    // Recording resumes after the scope.
    assert!(!x.exp().unwrap().is_leaf());
}

#[test]
fn detach_cuts_the_graph() {
    let x = Var::parameter(scalar(2.0));
    let y = x.mul(&x.detach()).unwrap().sum_all().unwrap();
    y.backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![2.0]);
}

#[test]
fn requires_grad_can_only_be_set_on_leaves() {
    let x = Var::leaf(scalar(1.0), false);
    x.set_requires_grad(true).unwrap();
    let y = x.exp().unwrap();
    let err = y.set_requires_grad(false).unwrap_err().to_string();
    assert!(err.contains("expected a leaf"), "{err}");
}

#[test]
fn a_second_backward_through_a_freed_graph_is_an_error() {
    let x = Var::parameter(scalar(1.0));
    let y = x.exp().unwrap().sum_all().unwrap();
    y.backward().unwrap();
    let err = y.backward().unwrap_err().to_string();
    assert!(err.contains("already backpropagated"), "{err}");
}

#[test]
fn backward_needs_a_scalar_or_an_explicit_seed() {
    let x = Var::parameter(Tensor::ones(&[2, 2], DType::F64).unwrap());
    let y = x.mul_scalar(3.0).unwrap();
    assert!(y.backward().is_err());
    y.backward_with(&Tensor::full(&[2, 2], 2.0, DType::F64).unwrap())
        .unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![6.0; 4]);
}

#[test]
fn a_deep_chain_backpropagates_and_drops_without_overflowing_the_stack() {
    let x = Var::parameter(scalar(1.0));
    let mut y = x.clone();
    for _ in 0..100_000 {
        y = y.mul_scalar(1.0).unwrap();
    }
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![1.0]);
    drop(y);
}

#[test]
fn set_value_replaces_a_leaf_value_of_the_same_shape() {
    let w = Var::parameter(scalar(1.0));
    let before = w.mul_scalar(2.0).unwrap();
    w.set_value(scalar(5.0)).unwrap();
    assert_eq!(w.item().unwrap(), 5.0);
    assert_eq!(
        before.item().unwrap(),
        2.0,
        "graphs built earlier keep the old value"
    );
    assert!(w
        .set_value(Tensor::zeros(&[2], DType::F64).unwrap())
        .is_err());
    assert!(before.set_value(scalar(0.0)).is_err());
    w.set_value(Tensor::zeros(&[1], DType::F32).unwrap())
        .unwrap();
    assert_eq!(w.value().dtype(), DType::F32, "a cast is allowed");
}

#[test]
fn a_transposed_weight_gets_a_contiguous_gradient() {
    // A linear layer multiplies by W.t(); W's gradient must come out in W's own layout, so the
    // optimizer reads it without gathering a strided copy.
    let x =
        Var::constant(Tensor::from_vec((0..12).map(|v| v as f64).collect(), &[2, 2, 3]).unwrap());
    let w = Var::parameter(
        Tensor::from_vec((0..12).map(|v| v as f64 * 0.1).collect(), &[4, 3]).unwrap(),
    );
    x.matmul(&w.t().unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grad = w.grad().unwrap();
    assert!(grad.is_contiguous());
    // dW[o, i] = Σ over rows of x[.., i] (the upstream gradient is all ones).
    let column_sums = [18.0, 22.0, 26.0];
    assert_eq!(grad.to_vec_f64(), column_sums.repeat(4));
}
