//! A smoke test of the binary from its own package. Its presence also makes `cargo test`
//! build `target/<profile>/ferry`, which the end-to-end tests in `tests/` run.

use std::process::Command;

#[test]
fn version_and_help_work() {
    let bin = env!("CARGO_BIN_EXE_ferry");
    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ferry "));
    let out = Command::new(bin)
        .args(["verify", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--fast"));
}
