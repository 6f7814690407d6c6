//! Where a tensor's storage lives.

use std::fmt;

/// A compute device: the CPU, or GPU `ordinal` through `ditmoe_cuda` (tensors move with
/// [`Tensor::to_device`](crate::Tensor::to_device); ops run where their operands are).
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

impl std::str::FromStr for Device {
    type Err = String;

    /// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    fn from_str(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
        }
    }
}

impl Device {
    /// Checks that the device can hold tensors now: `Cpu` always can; `Cuda(i)` when the
    /// NVIDIA driver has GPU i (or `DITMOE_CUDA_EMULATOR=1` makes it the PTX emulator). The
    /// error says what was missing ("no NVIDIA driver found …").
    pub fn ensure_available(self) -> crate::Result<()> {
        self.hardware().map(|_| ())
    }

    /// What the device is, for reports: "CPU (N threads)", or "cuda:0 (NVIDIA H100 80GB HBM3
    /// (sm_90))"; the same error as [`Device::ensure_available`] when it is not there.
    pub fn hardware(self) -> crate::Result<String> {
        match self {
            Device::Cpu => Ok(format!("CPU ({} threads)", crate::parallel::num_threads())),
            Device::Cuda(ordinal) => ditmoe_cuda::registry::device(ordinal)
                .map(|gpu| format!("{self} ({})", gpu.name()))
                .map_err(|e| crate::TensorError::DeviceUnavailable {
                    device: self,
                    reason: e.to_string(),
                }),
        }
    }
}
