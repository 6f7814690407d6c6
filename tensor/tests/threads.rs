//! `DITMOE_THREADS` sizes the pool (its own test binary, so the pool starts here).

use ditmoe_tensor::{seeded_rng, DType, Tensor};

#[test]
fn ditmoe_threads_sets_the_pool_size_and_results_do_not_depend_on_it() {
    std::env::set_var("DITMOE_THREADS", "3");
    assert_eq!(ditmoe_tensor::parallel::num_threads(), 3);
    // A product split across the pool equals, row by row, single-row products (which run
    // on one thread): the split changes nothing in the arithmetic.
    let a = Tensor::randn(&[200, 300], 0.0, 1.0, DType::F64, &mut seeded_rng(1)).unwrap();
    let b = Tensor::randn(&[300, 70], 0.0, 1.0, DType::F64, &mut seeded_rng(2)).unwrap();
    let whole = a.matmul(&b).unwrap().to_vec::<f64>().unwrap();
    for row in [0, 57, 199] {
        let single = a
            .narrow(0, row, 1)
            .unwrap()
            .matmul(&b)
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        assert_eq!(&whole[row * 70..(row + 1) * 70], single.as_slice());
    }
}
