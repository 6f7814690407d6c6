//! The error type of the CUDA crate.

/// What went wrong on the GPU side, in words a user can act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CudaError {
    /// No usable NVIDIA driver (or no such device).
    #[error("{0}")]
    Unavailable(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver error in {call}: {message}")]
    Driver { call: String, message: String },
    /// The PTX interpreter found a bug in a kernel (out-of-bounds access, race, divergence).
    #[error("PTX emulator: {0}")]
    Emulator(String),
    /// A kernel or module name that the catalogue does not have.
    #[error("unknown kernel {module}::{kernel}")]
    UnknownKernel { module: String, kernel: String },
    /// Arguments that do not fit the kernel (lengths, shapes).
    #[error("{0}")]
    InvalidArgument(String),
}

pub type Result<T> = std::result::Result<T, CudaError>;
