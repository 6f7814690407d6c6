//! The op families, named once for every backend: `ditmoe-tensor` re-exports these enums and
//! gives them their CPU meaning (`UnaryOp::apply`, …); the PTX kernels take the op code that
//! `ptx_code` derives from them here, and nowhere else.

/// An elementwise function `y = f(x)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Relu,
    /// x·σ(x) (Elfwing et al., 2017; a.k.a. swish).
    Silu,
    /// GELU with the tanh approximation (Hendrycks & Gimpel, 2016), as DiT's MLP uses.
    GeluTanh,
    Sin,
    Cos,
    Abs,
    /// x^p.
    Powf(f64),
    /// x + c.
    AddScalar(f64),
    /// x · c.
    MulScalar(f64),
}

impl UnaryOp {
    /// Every variant, the parametrised ones with a sample parameter (for tests and benchmarks).
    pub const EVERY: [UnaryOp; 16] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Silu,
        UnaryOp::GeluTanh,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Abs,
        UnaryOp::Powf(1.7),
        UnaryOp::AddScalar(0.5),
        UnaryOp::MulScalar(-3.0),
    ];

    /// The `unary_f32` kernel's op code and its `f32` parameter (0 for the plain functions).
    pub fn ptx_code(self) -> (u32, f32) {
        match self {
            UnaryOp::Neg => (0, 0.0),
            UnaryOp::Exp => (1, 0.0),
            UnaryOp::Log => (2, 0.0),
            UnaryOp::Sqrt => (3, 0.0),
            UnaryOp::Rsqrt => (4, 0.0),
            UnaryOp::Tanh => (5, 0.0),
            UnaryOp::Sigmoid => (6, 0.0),
            UnaryOp::Relu => (7, 0.0),
            UnaryOp::Silu => (8, 0.0),
            UnaryOp::GeluTanh => (9, 0.0),
            UnaryOp::Sin => (10, 0.0),
            UnaryOp::Cos => (11, 0.0),
            UnaryOp::Abs => (12, 0.0),
            UnaryOp::Powf(p) => (13, p as f32),
            UnaryOp::AddScalar(s) => (14, s as f32),
            UnaryOp::MulScalar(s) => (15, s as f32),
        }
    }
}

/// An elementwise function `y = f(a, b)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
    /// 1 where a > b, else 0 (not differentiable).
    Gt,
    /// 1 where a < b, else 0 (not differentiable).
    Lt,
    /// 1 where a == b, else 0 (not differentiable).
    Eq,
}

impl BinaryOp {
    /// Every variant (for tests).
    pub const EVERY: [BinaryOp; 9] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Gt,
        BinaryOp::Lt,
        BinaryOp::Eq,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::Gt => "gt",
            BinaryOp::Lt => "lt",
            BinaryOp::Eq => "eq",
        }
    }

    /// The `binary_f32` kernel's op code.
    pub fn ptx_code(self) -> u32 {
        match self {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
            BinaryOp::Maximum => 4,
            BinaryOp::Minimum => 5,
            BinaryOp::Gt => 6,
            BinaryOp::Lt => 7,
            BinaryOp::Eq => 8,
        }
    }
}

/// How the elements of a reduced row are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
    /// Variance with `correction` subtracted from the count (1 = unbiased, 0 = population).
    Var {
        correction: usize,
    },
    /// Σ x², a gradient's squared norm in one pass.
    SumOfSquares,
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::Var { .. } => "var",
            ReduceOp::SumOfSquares => "sum_of_squares",
        }
    }

    /// The row and column reduction kernels' op code; `None` for the reductions they lack.
    pub fn ptx_code(self) -> Option<u32> {
        match self {
            ReduceOp::Sum => Some(0),
            ReduceOp::Max => Some(1),
            ReduceOp::Mean => Some(2),
            ReduceOp::SumOfSquares => Some(3),
            ReduceOp::Min | ReduceOp::Var { .. } => None,
        }
    }

    /// How partial results of this reduction over chunks of a row combine into the row's
    /// result (exact for equal chunks): a sum of squares is the sum of the chunks' sums.
    pub fn combine_chunks(self) -> ReduceOp {
        match self {
            ReduceOp::SumOfSquares => ReduceOp::Sum,
            other => other,
        }
    }
}
