//! The real GPU: an NVIDIA device through the CUDA driver API (`cudarc`, loaded at run time,
//! so nothing CUDA is needed to build). Modules are loaded from PTX with `cuModuleLoadData`;
//! every kernel and copy goes to one stream.

use std::any::Any;
use std::sync::Arc;

use cudarc::driver::{self as cu, PushKernelArg};

use crate::buffer::{Allocation, Region};
use crate::error::{CudaError, Result};
use crate::launch::{Arg, LaunchConfig};
use crate::runtime::{Cache, KernelEntry, Runtime};

/// Device memory allocated by the driver.
#[derive(Debug)]
pub struct DriverAllocation(cu::CudaSlice<u8>);

impl DriverAllocation {
    pub fn slice(&self) -> &cu::CudaSlice<u8> {
        &self.0
    }
}

impl Allocation for DriverAllocation {
    fn bytes(&self) -> usize {
        self.0.len()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One NVIDIA GPU: its context, the stream everything runs on, and the loaded kernels.
pub struct DriverRuntime {
    name: String,
    context: Arc<cu::CudaContext>,
    stream: Arc<cu::CudaStream>,
    modules: Cache<Arc<cu::CudaModule>>,
    /// Kernel handles by `module::entry`, looked up once.
    functions: Cache<cu::CudaFunction>,
}

fn driver_error(call: &str) -> impl Fn(cu::DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver {
        call: call.to_string(),
        message: format!("{e:?}"),
    }
}

impl DriverRuntime {
    /// Opens GPU `ordinal`. Without a driver the error says so: "no NVIDIA driver found …".
    pub fn open(ordinal: usize) -> Result<DriverRuntime> {
        match crate::driver_status() {
            crate::DriverStatus::Missing(why) => return Err(CudaError::Unavailable(why)),
            crate::DriverStatus::Present { devices } if ordinal >= devices => {
                return Err(CudaError::Unavailable(format!(
                    "cuda:{ordinal} requested but the NVIDIA driver sees {devices} device(s)"
                )))
            }
            crate::DriverStatus::Present { .. } => {}
        }
        let context = cu::CudaContext::new(ordinal).map_err(driver_error("cuCtxCreate"))?;
        let name = context.name().unwrap_or_else(|_| "NVIDIA GPU".to_string());
        let (major, minor) = context
            .compute_capability()
            .map_err(driver_error("cuDeviceGetAttribute"))?;
        if major < 8 {
            return Err(CudaError::Unavailable(format!(
                "{name} has compute capability {major}.{minor}; our kernels need sm_80 or newer \
                 (bf16 tensor cores, cp.async)"
            )));
        }
        // Every kernel and copy of this GPU goes to one stream, so stream order is all the
        // synchronisation there is; cudarc's per-buffer read/write events would only add work.
        // SAFETY: no buffer of this context is used from another stream.
        unsafe { context.disable_event_tracking() };
        let stream = context.default_stream();
        Ok(DriverRuntime {
            name: format!("{name} (sm_{major}{minor})"),
            context,
            stream,
            modules: Cache::new(),
            functions: Cache::new(),
        })
    }

    /// The kernel handle of `kernel`, its module loaded on first use.
    fn function(&self, kernel: KernelEntry) -> Result<cu::CudaFunction> {
        let key = format!("{}::{}", kernel.module, kernel.name);
        self.functions.get_or_load(&key, || {
            let module = self.modules.get_or_load(kernel.module, || {
                self.context
                    .load_module(cudarc::nvrtc::Ptx::from_src(kernel.ptx))
                    .map_err(driver_error("cuModuleLoadData"))
            })?;
            module
                .load_function(kernel.name)
                .map_err(|_| kernel.unknown())
        })
    }
}

/// The driver memory `region` is a window of.
fn window(region: Region<'_>) -> Result<cu::CudaView<'_, u8>> {
    let slice = region.allocation_of::<DriverAllocation>()?.slice();
    Ok(slice.slice(region.offset..region.offset + region.bytes))
}

impl Runtime for DriverRuntime {
    fn name(&self) -> &str {
        &self.name
    }

    fn upload(&self, bytes: &[u8]) -> Result<Box<dyn Allocation>> {
        // cuMemAlloc of zero bytes fails; keep one byte so empty buffers are valid.
        let data: &[u8] = if bytes.is_empty() { &[0] } else { bytes };
        let slice = self
            .stream
            .memcpy_stod(data)
            .map_err(driver_error("cuMemcpyHtoD"))?;
        Ok(Box::new(DriverAllocation(slice)))
    }

    fn zeros(&self, bytes: usize) -> Result<Box<dyn Allocation>> {
        // cuMemAlloc of zero bytes fails; keep one byte so empty buffers are valid.
        let slice = self
            .stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(driver_error("cuMemsetD8"))?;
        Ok(Box::new(DriverAllocation(slice)))
    }

    fn download(&self, region: Region) -> Result<Vec<u8>> {
        self.stream
            .memcpy_dtov(&window(region)?)
            .map_err(driver_error("cuMemcpyDtoH"))
    }

    fn launch(&self, kernel: KernelEntry, config: LaunchConfig, args: &[Arg]) -> Result<()> {
        let function = self.function(kernel)?;
        if config.shared_bytes > 48 * 1024 {
            function
                .set_attribute(
                    cu::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    config.shared_bytes as i32,
                )
                .map_err(driver_error("cuFuncSetAttribute"))?;
        }
        // Each buffer goes to the kernel as a window of its allocation (the whole of it, or a
        // view's part), made before the builder borrows them.
        let windows = args
            .iter()
            .filter_map(|arg| match arg {
                Arg::Buffer(raw) => Some(window(raw.region())),
                _ => None,
            })
            .collect::<Result<Vec<_>>>()?;
        let mut windows = windows.iter();
        let mut builder = self.stream.launch_builder(&function);
        for arg in args {
            match arg {
                Arg::Buffer(_) => builder.arg(windows.next().expect("one window per buffer")),
                Arg::U32(v) => builder.arg(v),
                Arg::U64(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
            };
        }
        let cfg = cu::LaunchConfig {
            grid_dim: config.grid,
            block_dim: config.block,
            shared_mem_bytes: config.shared_bytes,
        };
        // SAFETY: the typed wrappers in `crate::ops` pass exactly the parameters each kernel
        // declares, and size the grid to the buffers they pass.
        unsafe { builder.launch(cfg) }.map_err(driver_error(kernel.name))?;
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver_error("cuStreamSynchronize"))
    }

    fn cuda_stream(&self) -> Option<Arc<cu::CudaStream>> {
        Some(Arc::clone(&self.stream))
    }
}
