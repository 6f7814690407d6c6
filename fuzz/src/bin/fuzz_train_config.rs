#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ditmoe_fuzz::targets::train_config(data));
