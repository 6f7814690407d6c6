#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ditmoe_fuzz::targets::run_state(data));
