//! What this thread has asked of the GPUs: kernel launches, copies and allocations, counted
//! per thread (over every GPU), so that a profiler or a test sees its own work and nobody
//! else's. What a profiler reads to tell kernel work from host round trips.

use std::cell::Cell;

/// Counts of what was asked, since a thread started ([`this_thread`]) or between two reads
/// (their difference).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Kernel launches.
    pub launches: u64,
    /// Copies from the host (each also allocates).
    pub uploads: u64,
    /// Copies to the host: each waits for every kernel launched before it.
    pub downloads: u64,
    /// Fresh zeroed buffers (an allocation and a device memset).
    pub allocations: u64,
}

/// One thing asked of a GPU, as [`count`] records it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Request {
    Launch,
    Upload,
    Download,
    Allocation,
}

impl std::ops::Sub for Traffic {
    type Output = Traffic;
    fn sub(self, earlier: Traffic) -> Traffic {
        Traffic {
            launches: self.launches - earlier.launches,
            uploads: self.uploads - earlier.uploads,
            downloads: self.downloads - earlier.downloads,
            allocations: self.allocations - earlier.allocations,
        }
    }
}

impl std::ops::Add for Traffic {
    type Output = Traffic;
    fn add(self, other: Traffic) -> Traffic {
        Traffic {
            launches: self.launches + other.launches,
            uploads: self.uploads + other.uploads,
            downloads: self.downloads + other.downloads,
            allocations: self.allocations + other.allocations,
        }
    }
}

thread_local! {
    static COUNTED: Cell<Traffic> = const {
        Cell::new(Traffic {
            launches: 0,
            uploads: 0,
            downloads: 0,
            allocations: 0,
        })
    };
}

/// Everything this thread has asked of every GPU so far; subtract two reads for what lies
/// between them.
pub fn this_thread() -> Traffic {
    COUNTED.with(Cell::get)
}

/// Counts `request` for this thread.
pub(crate) fn count(request: Request) {
    COUNTED.with(|c| {
        let mut counted = c.get();
        match request {
            Request::Launch => counted.launches += 1,
            Request::Upload => counted.uploads += 1,
            Request::Download => counted.downloads += 1,
            Request::Allocation => counted.allocations += 1,
        }
        c.set(counted);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_per_thread() {
        let before = this_thread();
        count(Request::Launch);
        count(Request::Download);
        std::thread::spawn(|| count(Request::Upload))
            .join()
            .unwrap();
        assert_eq!(
            this_thread() - before,
            Traffic {
                launches: 1,
                downloads: 1,
                ..Traffic::default()
            }
        );
    }
}
