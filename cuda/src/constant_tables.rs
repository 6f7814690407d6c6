//! Read-only u32 tables that kernels take (the shape/stride tables of the strided elementwise
//! kernels, the schedules of the grouped GEMMs), uploaded once per distinct content and
//! shared afterwards: a training step repeats the same few hundred tables every step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::buffer::Buffer;
use crate::error::Result;

/// How many distinct tables are kept before the cache starts over.
const TABLES_KEPT: usize = 4096;

/// The uploaded tables of one GPU, by content.
#[derive(Default)]
pub(crate) struct ConstantTables(Mutex<HashMap<Vec<u32>, Arc<Buffer<u32>>>>);

impl ConstantTables {
    /// The buffer holding `values`, made by `upload` the first time these values are asked for.
    pub(crate) fn get_or_upload(
        &self,
        values: &[u32],
        upload: impl FnOnce() -> Result<Buffer<u32>>,
    ) -> Result<Arc<Buffer<u32>>> {
        let mut tables = self.0.lock().expect("constant tables");
        if let Some(table) = tables.get(values) {
            return Ok(Arc::clone(table));
        }
        if tables.len() >= TABLES_KEPT {
            tables.clear();
        }
        let table = Arc::new(upload()?);
        tables.insert(values.to_vec(), Arc::clone(&table));
        Ok(table)
    }
}
