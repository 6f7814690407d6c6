//! Finite-difference gradient checks of every differentiable op over proptest-drawn shapes
//! (size-1 and broadcast dimensions included) and random values.

use ditmoe_autograd::{check_gradients, Var};
use ditmoe_tensor::{seeded_rng, DType, GroupSizes, ReduceOp, Result, Tensor, UnaryOp};
use proptest::prelude::*;
use rand::Rng;

fn normal(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F64, &mut seeded_rng(seed)).unwrap()
}

/// Values in [0.5, 2.5): inside the domain of log, sqrt, powf and safe as divisors.
fn positive(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(shape, 0.5, 2.5, DType::F64, &mut seeded_rng(seed)).unwrap()
}

fn indices(values: Vec<i64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(values, shape).unwrap()
}

fn assert_grads(f: impl Fn(&[Var]) -> Result<Var>, inputs: &[Tensor]) {
    if let Err(failure) = check_gradients(f, inputs) {
        panic!("{failure}");
    }
}

fn shape(max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=4, 1..=max_rank)
}

/// A shape and a second shape that broadcasts with it (some dims set to 1, some leading dims
/// dropped).
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (shape(3), any::<u64>()).prop_map(|(a, seed)| {
        let mut rng = seeded_rng(seed);
        let drop = rng.random_range(0..a.len());
        let b: Vec<usize> = a[drop..]
            .iter()
            .map(|&s| if rng.random_bool(0.3) { 1 } else { s })
            .collect();
        if rng.random_bool(0.5) {
            (a, b)
        } else {
            (b, a)
        }
    })
}

/// A non-empty subset of the dims of a rank-`rank` tensor, in random order.
fn dim_subset(rank: usize, seed: u64) -> Vec<usize> {
    let mut rng = seeded_rng(seed);
    let mut dims: Vec<usize> = (0..rank).filter(|_| rng.random_bool(0.5)).collect();
    if dims.is_empty() {
        dims.push(rng.random_range(0..rank));
    }
    if rng.random_bool(0.5) {
        dims.reverse();
    }
    dims
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every unary op in every case, so no op goes unchecked in a run.
    #[test]
    fn unary_ops(shape in shape(3), seed in any::<u64>()) {
        for op in UnaryOp::EVERY {
            let needs_positive = matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Powf(_));
            let x = if needs_positive { positive(&shape, seed) } else { normal(&shape, seed) };
            if let Err(failure) = check_gradients(|v| v[0].unary(op), &[x]) {
                panic!("{op:?}: {failure}");
            }
        }
    }

    /// Logits far from 0 and exactly 0 (where composing max and |x| has a kink), against
    /// hard and soft targets.
    #[test]
    fn binary_cross_entropy_on_logits(shape in shape(3), seed in any::<u64>()) {
        let x = normal(&shape, seed).mul_scalar(4.0).unwrap();
        let mut values = x.to_vec::<f64>().unwrap();
        values[0] = 0.0;
        let x = Tensor::from_vec(values, &shape).unwrap();
        let soft = Tensor::rand_uniform(&shape, 0.0, 1.0, DType::F64, &mut seeded_rng(seed ^ 1)).unwrap();
        let hard = soft.gt(&Tensor::full(&shape, 0.5, DType::F64).unwrap()).unwrap();
        for target in [soft, hard] {
            assert_grads(|v| v[0].bce_with_logits(&target), std::slice::from_ref(&x));
        }
    }

    #[test]
    fn swiglu_gated_product(shape in shape(3), seed in any::<u64>()) {
        let (gate, up) = (normal(&shape, seed), normal(&shape, seed ^ 1));
        assert_grads(|v| v[0].swiglu(&v[1]), &[gate, up]);
    }

    #[test]
    fn binary_ops_with_broadcasting((sa, sb) in broadcast_pair(), seed in any::<u64>()) {
        let (a, b) = (normal(&sa, seed), positive(&sb, seed ^ 1));
        assert_grads(|v| v[0].add(&v[1]), &[a.clone(), b.clone()]);
        assert_grads(|v| v[0].sub(&v[1]), &[a.clone(), b.clone()]);
        assert_grads(|v| v[0].mul(&v[1]), &[a.clone(), b.clone()]);
        assert_grads(|v| v[0].div(&v[1]), &[a.clone(), b.clone()]);
        let c = normal(&sb, seed ^ 2);
        assert_grads(|v| v[0].maximum(&v[1]), &[a.clone(), c.clone()]);
        assert_grads(|v| v[0].minimum(&v[1]), &[a, c]);
    }

    #[test]
    fn reductions(shape in shape(3), seed in any::<u64>(), keepdim in any::<bool>()) {
        let x = normal(&shape, seed);
        let dims = dim_subset(shape.len(), seed);
        assert_grads(|v| v[0].sum(&dims, keepdim), std::slice::from_ref(&x));
        assert_grads(|v| v[0].mean(&dims, keepdim), std::slice::from_ref(&x));
        assert_grads(|v| v[0].max(&dims, keepdim), std::slice::from_ref(&x));
        assert_grads(|v| v[0].min(&dims, keepdim), std::slice::from_ref(&x));
        assert_grads(|v| v[0].reduce(ReduceOp::SumOfSquares, &dims, keepdim), std::slice::from_ref(&x));
        let count: usize = dims.iter().map(|&d| shape[d]).product();
        if count > 1 {
            assert_grads(|v| v[0].var(&dims, keepdim, true), std::slice::from_ref(&x));
        }
        assert_grads(|v| v[0].var(&dims, keepdim, false), &[x]);
    }

    #[test]
    fn softmax_and_log_softmax(shape in shape(3), seed in any::<u64>(), dim_seed in any::<usize>()) {
        let x = normal(&shape, seed);
        let dim = dim_seed % shape.len();
        assert_grads(|v| v[0].softmax(dim), std::slice::from_ref(&x));
        assert_grads(|v| v[0].log_softmax(dim), &[x]);
    }

    #[test]
    fn layer_norm(shape in shape(3), seed in any::<u64>()) {
        let mut shape = shape;
        *shape.last_mut().unwrap() += 1; // at least 2 features, so the variance is not 0
        let d = *shape.last().unwrap();
        let (x, w, b) = (normal(&shape, seed), normal(&[d], seed ^ 1), normal(&[d], seed ^ 2));
        assert_grads(|v| v[0].layer_norm(None, None, 1e-5), std::slice::from_ref(&x));
        assert_grads(|v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5), &[x.clone(), w.clone(), b]);
        assert_grads(|v| v[0].layer_norm(Some(&v[1]), None, 1e-5), &[x, w]);
    }

    #[test]
    fn matmul_batched_broadcast_and_transposed(m in 1usize..5, k in 1usize..5, n in 1usize..5, batch in 1usize..3, seed in any::<u64>()) {
        let a = normal(&[batch, 1, m, k], seed);
        let b = normal(&[3, k, n], seed ^ 1);
        assert_grads(|v| v[0].matmul(&v[1]), &[a, b]);
        // Transposed operands (views, no copies) in both positions.
        let at = normal(&[k, m], seed ^ 2);
        let bt = normal(&[n, k], seed ^ 3);
        assert_grads(|v| v[0].t()?.matmul(&v[1].t()?), &[at, bt]);
        // A linear layer's shape: batched rows times a transposed, broadcast weight.
        let x = normal(&[batch, m, k], seed ^ 4);
        let w = normal(&[n, k], seed ^ 5);
        assert_grads(|v| v[0].matmul(&v[1].t()?), &[x, w]);
    }

    #[test]
    fn fused_attention(heads in 1usize..3, t in 1usize..6, tk in 1usize..6, d in 1usize..4, seed in any::<u64>()) {
        let (q, k, v) = (normal(&[heads, t, d], seed), normal(&[heads, tk, d], seed ^ 1), normal(&[heads, tk, d], seed ^ 2));
        assert_grads(|x| Var::flash_attention(&x[0], &x[1], &x[2], 0.7), &[q, k, v]);
    }

    #[test]
    fn grouped_matmul(sizes in prop::collection::vec(0usize..4, 1..4), d_in in 1usize..4, d_out in 1usize..4, seed in any::<u64>()) {
        let rows: usize = sizes.iter().sum();
        let inputs = [normal(&[rows, d_in], seed), normal(&[sizes.len(), d_out, d_in], seed ^ 1)];
        let sizes = GroupSizes::host(&sizes);
        assert_grads(|v| Var::grouped_matmul(&v[0], &sizes, &v[1]), &inputs);
    }

    #[test]
    fn views(shape in shape(3), seed in any::<u64>()) {
        let x = normal(&shape, seed);
        let numel: usize = shape.iter().product();
        let weights = Var::constant(normal(&[numel], seed ^ 9));
        // Each view is followed by a flatten and an elementwise product so the check sees order.
        let through = |y: Var| y.contiguous()?.flatten()?.mul(&weights);
        let rank = shape.len();
        assert_grads(|v| through(v[0].reshape(&[numel])?), std::slice::from_ref(&x));
        // A rotation: for rank 3 not its own inverse, so a wrong inverse shows.
        let rotation: Vec<usize> = (1..rank).chain([0]).collect();
        assert_grads(|v| through(v[0].permute(&rotation)?), std::slice::from_ref(&x));
        assert_grads(|v| through(v[0].transpose(0, rank - 1)?), std::slice::from_ref(&x));
        assert_grads(|v| through(v[0].unsqueeze(1)?.squeeze(1)?), std::slice::from_ref(&x));
        let last = shape[rank - 1];
        let start = (seed as usize) % last;
        assert_grads(|v| v[0].narrow(rank - 1, start, last - start)?.exp(), std::slice::from_ref(&x));
        let mut big = vec![2];
        big.extend(&shape);
        assert_grads(|v| v[0].broadcast_to(&big)?.exp(), &[x]);
    }

    #[test]
    fn index_ops(rows in 1usize..4, cols in 1usize..5, seed in any::<u64>()) {
        let mut rng = seeded_rng(seed);
        let x = normal(&[rows, cols], seed);
        let picks: Vec<i64> = (0..3).map(|_| rng.random_range(0..cols as i64)).collect();
        let idx = indices(picks, &[3]);
        assert_grads(|v| v[0].index_select(1, &idx), std::slice::from_ref(&x));
        let src = normal(&[rows, 3], seed ^ 1);
        assert_grads(|v| v[0].index_add(1, &idx, &v[1]), &[x.clone(), src]);

        let gathered: Vec<i64> = (0..rows * 2).map(|_| rng.random_range(0..cols as i64)).collect();
        let gidx = indices(gathered, &[rows, 2]);
        assert_grads(|v| v[0].gather(1, &gidx), std::slice::from_ref(&x));
        let gsrc = normal(&[rows, 2], seed ^ 2);
        assert_grads(|v| v[0].scatter_add(1, &gidx, &v[1]), &[x.clone(), gsrc]);

        let k = 1 + (seed as usize) % cols;
        assert_grads(|v| Ok(v[0].topk(k, 1, true)?.0), std::slice::from_ref(&x));
        assert_grads(|v| Ok(v[0].topk(1, 0, false)?.0), std::slice::from_ref(&x));

        let mask = Tensor::rand_uniform(&[rows, cols], 0.0, 1.0, DType::F64, &mut rng).unwrap().gt(&Tensor::scalar(0.5f64)).unwrap();
        let y = normal(&[cols], seed ^ 3);
        assert_grads(|v| Var::where_cond(&mask, &v[0], &v[1]), &[x.clone(), y]);
        assert_grads(|v| v[0].masked_fill(&mask, 3.0), &[x]);
    }

    #[test]
    fn concat_stack_split_chunk(shape in shape(3), seed in any::<u64>()) {
        let rank = shape.len();
        let dim = (seed as usize) % rank;
        let mut other = shape.clone();
        other[dim] += 1;
        let (a, b) = (normal(&shape, seed), normal(&other, seed ^ 1));
        assert_grads(|v| Var::concat(&[&v[0], &v[1]], dim), &[a.clone(), b.clone()]);
        let c = normal(&shape, seed ^ 2);
        assert_grads(|v| Var::stack(&[&v[0], &v[1]], dim), &[a, c]);
        // Weight the pieces differently so a mis-routed gradient is visible.
        assert_grads(|v| {
            let pieces = v[0].chunk(2, dim)?;
            let first = pieces[0].mul_scalar(2.0)?.flatten()?;
            let rest: Vec<Var> = pieces[1..].iter().map(|p| p.exp()?.flatten()).collect::<Result<_>>()?;
            let mut all = vec![&first];
            all.extend(rest.iter());
            Var::concat(&all, 0)
        }, std::slice::from_ref(&b));
        let size = b.shape()[dim];
        assert_grads(|v| {
            let parts = v[0].split(&[1, size - 1], dim)?;
            parts[1].sin()?.sum(&[], false)?.add(&parts[0].sum(&[], false)?)
        }, &[b]);
    }
}
