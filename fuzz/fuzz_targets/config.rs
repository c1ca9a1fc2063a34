//! Fuzz target: configuration loading, tag merge, hardware and plan
//! generation. The input is a machine file, or `host\0machine` to fuzz the
//! host file too. Nothing may panic; a built machine must give a plan that
//! passes its own checks and carries no control character to QEMU.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use machina::config::{self, Host, HostFile, MachineFile};
use machina::names::MachineName;

const EXAMPLE_HOST: &str = include_str!("../../examples/config/machina.conf.json");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (host_text, vm_text) = text.split_once('\0').unwrap_or((EXAMPLE_HOST, text));
    let Ok(host) = config::parse::<HostFile>(Path::new("h.json"), host_text) else {
        return;
    };
    let Ok(file) = config::parse::<MachineFile>(Path::new("m.json"), vm_text) else {
        return;
    };
    let name = MachineName::new("vm").unwrap();
    let host = Host {
        file: &host,
        path: Path::new("h.json"),
    };
    let Ok(m) = config::build(&host, &name, &file, Path::new("m.json")) else {
        return;
    };
    let Ok(hw) = machina::qemu::build(&m) else {
        return;
    };
    let plan = machina::plan::plan_for(&m, &hw, 70000, Path::new("/sys"));
    plan.check().expect("generated plan is valid");
    assert!(plan
        .qemu
        .args
        .iter()
        .all(|a| !a.chars().any(char::is_control)));
    machina::plan::Plan::from_json(&plan.to_json()).expect("plan reads back");
});
