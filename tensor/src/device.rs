//! Where a tensor's storage lives.

use std::fmt;

/// A compute device. Only `Cpu` executes operations today; `Cuda(ordinal)` is part of the type
/// so that code can name it, and every attempt to use it returns [`TensorError::DeviceUnavailable`]
/// until the CUDA backend lands.
///
/// [`TensorError::DeviceUnavailable`]: crate::TensorError::DeviceUnavailable
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl Device {
    /// Checks that the device can hold tensors now. `Cpu` always can; `Cuda` cannot yet, and the
    /// error says whether a driver was found at all.
    pub fn ensure_available(self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(_) => {
                let reason = match ditmoe_cuda::driver_status() {
                    ditmoe_cuda::DriverStatus::Missing(why) => why,
                    ditmoe_cuda::DriverStatus::Present { devices } => format!(
                        "an NVIDIA driver with {devices} device(s) was found, but the CUDA tensor \
                         backend is not implemented yet (see issue #6); use Device::Cpu"
                    ),
                };
                Err(crate::TensorError::DeviceUnavailable {
                    device: self,
                    reason,
                })
            }
        }
    }
}
