//! Any string as a Kubernetes quantity: an error or a number, never a panic or NaN.
#![no_main]

use kube_node_status::readings::quantity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(value) = quantity::parse(text) {
        assert!(!value.is_nan(), "{text:?} parsed as NaN");
    }
});
