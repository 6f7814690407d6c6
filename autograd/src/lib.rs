pub use ditmoe_tensor as tensor;
