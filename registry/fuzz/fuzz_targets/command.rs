//! An ops command written by someone else (etcdctl, scripts): parsed or refused.
#![no_main]

use registry::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Command::parse(data) {
        assert!(c.validate().is_ok());
        assert!(c.move_percent() <= 100);
    }
});
