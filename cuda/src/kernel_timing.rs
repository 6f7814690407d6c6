//! The time of each kernel, for a profiler: while timing is on for a thread ([`start`]),
//! every launch from it waits for the GPU before and after, and its time is added to its
//! entry name's total. Per thread, like [`crate::traffic`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

/// How often one kernel ran and for how long, while timing was on.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KernelTime {
    pub launches: u64,
    /// From before the launch to the end of the kernel (the GPU idle at both ends).
    pub time: Duration,
}

thread_local! {
    /// `Some` while timing is on.
    static TIMES: RefCell<Option<HashMap<String, KernelTime>>> = const { RefCell::new(None) };
}

/// Starts timing the kernels this thread launches, from zero: for profiling only, since each
/// launch then waits for the GPU.
pub fn start() {
    TIMES.with(|t| *t.borrow_mut() = Some(HashMap::new()));
}

/// Stops timing and forgets the times.
pub fn stop() {
    TIMES.with(|t| *t.borrow_mut() = None);
}

/// The time of each kernel since [`start`], by entry name (empty when timing is off).
pub fn times() -> HashMap<String, KernelTime> {
    TIMES.with(|t| t.borrow().clone().unwrap_or_default())
}

/// Whether launches from this thread are timed.
pub(crate) fn is_on() -> bool {
    TIMES.with(|t| t.borrow().is_some())
}

/// Adds one launch of `entry` that took `elapsed`.
pub(crate) fn record(entry: &str, elapsed: Duration) {
    TIMES.with(|t| {
        if let Some(times) = t.borrow_mut().as_mut() {
            let time = times.entry(entry.to_string()).or_default();
            time.launches += 1;
            time.time += elapsed;
        }
    });
}
