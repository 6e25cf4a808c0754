//! Configuration parsing, `Config::from_json`: whatever the bytes, a
//! configuration or an error that names a field, never a panic (a panic in
//! `on_configure` would take the VM down instead of refusing the config).
#![no_main]

use appguard::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Config::from_json(data) {
        Ok(c) => {
            // A configuration that parsed is usable: every route name is set.
            assert!(c.routes.iter().all(|r| !r.name.is_empty()));
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "an error without a message");
            let _ = e.to_string();
        }
    }
});
