//! The emulator as a [`Runtime`]: allocations are address ranges of one [`GlobalMemory`],
//! modules are parsed once, and a launch interprets the kernel before it returns (so there is
//! never anything to wait for).

use std::any::Any;
use std::sync::{Arc, Mutex};

use super::{launch, parse_module, GlobalMemory, Kernel, LaunchDims, Module};
use crate::buffer::{Allocation, Region};
use crate::error::{CudaError, Result};
use crate::launch::{Arg, LaunchConfig};
use crate::runtime::{Cache, KernelEntry, Runtime};

/// `bytes` bytes at `address` of an emulator's memory, freed when dropped.
#[derive(Debug)]
pub struct EmulatedAllocation {
    address: u64,
    bytes: usize,
    memory: Arc<Mutex<GlobalMemory>>,
}

impl Allocation for EmulatedAllocation {
    fn bytes(&self) -> usize {
        self.bytes
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for EmulatedAllocation {
    fn drop(&mut self) {
        self.memory
            .lock()
            .expect("emulator memory")
            .free(self.address);
    }
}

/// The PTX interpreter with its memory and parsed modules.
pub struct EmulatorRuntime {
    memory: Arc<Mutex<GlobalMemory>>,
    modules: Cache<Arc<Module>>,
}

impl Default for EmulatorRuntime {
    fn default() -> Self {
        EmulatorRuntime {
            memory: Arc::new(Mutex::new(GlobalMemory::default())),
            modules: Cache::new(),
        }
    }
}

impl EmulatorRuntime {
    /// The address `region` starts at, if its allocation is in this emulator's memory.
    fn address(&self, region: Region) -> Result<u64> {
        let allocation = region.allocation_of::<EmulatedAllocation>()?;
        if !Arc::ptr_eq(&allocation.memory, &self.memory) {
            return Err(CudaError::InvalidArgument(
                "a buffer of one emulator was used on another".into(),
            ));
        }
        Ok(allocation.address + region.offset as u64)
    }

    /// The raw bits of each argument, checked against the kernel's declared parameter types.
    fn params(&self, kernel: &Kernel, args: &[Arg]) -> Result<Vec<u64>> {
        if args.len() != kernel.params.len() {
            return Err(CudaError::InvalidArgument(format!(
                "kernel {} takes {} arguments, {} given",
                kernel.name,
                kernel.params.len(),
                args.len()
            )));
        }
        args.iter()
            .zip(&kernel.params)
            .map(|(arg, (name, ty))| {
                let (bits, bytes) = match arg {
                    Arg::Buffer(raw) => (self.address(raw.region())?, 8),
                    Arg::U32(v) => (*v as u64, 4),
                    Arg::U64(v) => (*v, 8),
                    Arg::F32(v) => (v.to_bits() as u64, 4),
                };
                if bytes != ty.bytes() {
                    return Err(CudaError::InvalidArgument(format!(
                        "kernel {}: parameter {name} is {ty:?} but a {bytes}-byte value was passed",
                        kernel.name
                    )));
                }
                Ok(bits)
            })
            .collect()
    }
}

impl Runtime for EmulatorRuntime {
    fn name(&self) -> &str {
        "PTX emulator (CPU)"
    }

    fn upload(&self, bytes: &[u8]) -> Result<Box<dyn Allocation>> {
        let mut global = self.memory.lock().expect("emulator memory");
        let address = global.alloc(bytes.len());
        global.write(address, bytes).map_err(CudaError::Emulator)?;
        Ok(Box::new(EmulatedAllocation {
            address,
            bytes: bytes.len(),
            memory: Arc::clone(&self.memory),
        }))
    }

    fn zeros(&self, bytes: usize) -> Result<Box<dyn Allocation>> {
        self.upload(&vec![0u8; bytes])
    }

    fn download(&self, region: Region) -> Result<Vec<u8>> {
        let address = self.address(region)?;
        let global = self.memory.lock().expect("emulator memory");
        let bytes = global
            .read(address, region.bytes)
            .map_err(CudaError::Emulator)?;
        Ok(bytes.to_vec())
    }

    fn launch(&self, kernel: KernelEntry, config: LaunchConfig, args: &[Arg]) -> Result<()> {
        let module = self.modules.get_or_load(kernel.module, || {
            Ok(Arc::new(
                parse_module(kernel.ptx).map_err(CudaError::Emulator)?,
            ))
        })?;
        let parsed = module
            .kernels
            .get(kernel.name)
            .ok_or_else(|| kernel.unknown())?;
        let params = self.params(parsed, args)?;
        let dims = LaunchDims {
            grid: [config.grid.0, config.grid.1, config.grid.2],
            block: [config.block.0, config.block.1, config.block.2],
            dynamic_shared_bytes: config.shared_bytes,
        };
        let mut global = self.memory.lock().expect("emulator memory");
        launch(parsed, dims, &params, &mut global).map_err(CudaError::Emulator)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
