//! The chart as the real Helm engine renders it (tests/chart/render_objects.py).

use std::process::Command;

use serde_json::Value;

use super::peer;

/// Every object the chart renders for `values` (release kns in monitoring).
pub fn render(values: &Value) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chart/render_objects.py");
    let out = Command::new(peer("python3"))
        .arg(script)
        .arg(values.to_string())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "rendering the chart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the objects as JSON")
}
