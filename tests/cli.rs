//! The `machina` command line on the bundled example configuration.

mod common;

use common::TempDir;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/config")
}

fn machina(args: &[&str]) -> Output {
    Command::new(common::bin("machina"))
        .arg("--config-dir")
        .arg(examples())
        .args(args)
        .output()
        .expect("run machina")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn gen_id_and_mac() {
    let id = stdout(&machina(&["gen-id"]));
    let u: uuid::Uuid = id.trim().parse().unwrap();
    assert_eq!(u.get_version_num(), 4);
    assert_eq!(id.trim(), u.to_string());
    let mac = stdout(&machina(&["gen-mac"]));
    let mac = mac.trim();
    assert!(mac.starts_with("52:54:00:") && mac.len() == 17, "{mac}");
    assert_ne!(stdout(&machina(&["gen-mac"])).trim(), mac);
}

#[test]
fn version_and_usage_errors() {
    assert!(stdout(&machina(&["version"])).starts_with("machina "));
    let o = machina(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = machina(&["args"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a missing machine is a usage error"
    );
    let help = stdout(&machina(&["--help"]));
    assert!(help.contains("Exit codes: 0 success; 1"));
}

#[test]
fn list_and_cat() {
    let list = stdout(&machina(&["list"]));
    let names: Vec<&str> = list
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["desk-042", "test-vm", "web-01"]);
    assert!(list.contains("(Web front end (Debian 12))"));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&machina(&["list", "--json"]))).unwrap();
    assert_eq!(json["machines"][2]["state"], "stopped");
    assert_eq!(json["machines"][2]["name"], "web-01");

    let two = stdout(&machina(&["cat", "web-01", "system"]));
    assert!(two.starts_with("----web-01----\n  Name: web-01\n"));
    assert!(two.contains("----system----\n  Storage:\n"));
    let j: serde_json::Value =
        serde_json::from_str(&stdout(&machina(&["cat", "--json", "web-01"]))).unwrap();
    assert_eq!(j[0]["connections"][0]["queues"], 4);
    assert_eq!(
        j[0]["volumes"][0]["path"],
        "/srv/machina/disks/web-01/os.raw"
    );
    let gid = j[0]["group"]["id"].as_u64().unwrap();
    assert!((65536..=524287).contains(&gid));
}

#[test]
fn args_for_several_machines() {
    let out = stdout(&machina(&["args", "web-01", "desk-042"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "----web-01----");
    assert!(
        lines[1].starts_with("-uuid 5c0ffee0-7d3b-4c8a-9a57-2f4e6b1d9e01 -name web-01 -enable-kvm")
    );
    assert!(lines[1].contains("-netdev tap,id=net.0,fds=3:5:7:9,vhost=on,vhostfds=4:6:8:10"));
    assert_eq!(lines[2], "");
    assert_eq!(lines[3], "----desk-042----");
    // A bad name is refused before any lookup.
    let o = machina(&["args", "../etc/passwd"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("machine name"));
    let o = machina(&["args", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.conf.json: no such machine"));
}

#[test]
fn gen_writes_plans_that_keep_their_ids() {
    let root = TempDir::new("cli-gen");
    let r = root.0.to_str().unwrap();
    stdout(&machina(&["gen", "--root", r, "web-01", "test-vm"]));
    let plan_path = root.0.join("etc/machina/launch/web-01.json");
    let meta = std::fs::metadata(&plan_path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    let plan =
        machina::plan::Plan::from_json(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    let other = machina::plan::Plan::from_json(
        &std::fs::read_to_string(root.0.join("etc/machina/launch/test-vm.json")).unwrap(),
    )
    .unwrap();
    assert_ne!(plan.uid, other.uid);
    assert_eq!(plan.qemu.args, machina_args("web-01"));
    assert_eq!(plan.taps[0].fds, [3, 5, 7, 9]);
    // An account that takes web-01's id does not move an existing VM…
    std::fs::create_dir_all(root.0.join("etc")).unwrap();
    std::fs::write(
        root.0.join("etc/passwd"),
        format!("someone:x:{}:{}::/:/bin/sh\n", plan.uid, plan.uid),
    )
    .unwrap();
    stdout(&machina(&["gen", "--root", r, "web-01"]));
    let again =
        machina::plan::Plan::from_json(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    assert_eq!(again.uid, plan.uid, "a VM keeps its id across gen runs");
    // …but a new VM whose first candidate is taken moves to the next round.
    std::fs::remove_file(&plan_path).unwrap();
    stdout(&machina(&["gen", "--root", r, "web-01"]));
    let moved =
        machina::plan::Plan::from_json(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    assert_ne!(moved.uid, plan.uid);
    assert!(
        !std::fs::read_dir(root.0.join("etc/machina/launch"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with('.')),
        "no temporary files left"
    );
}

fn machina_args(vm: &str) -> Vec<String> {
    let line = stdout(&machina(&["args", vm]));
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn schema_is_strict_json_schema() {
    for kind in ["host", "machine"] {
        let s: serde_json::Value =
            serde_json::from_str(&stdout(&machina(&["schema", kind]))).unwrap();
        assert_eq!(s["additionalProperties"], false, "{kind}");
        assert!(s["$schema"].as_str().unwrap().contains("json-schema.org"));
    }
    let m: serde_json::Value =
        serde_json::from_str(&stdout(&machina(&["schema", "machine"]))).unwrap();
    let text = m.to_string();
    assert!(text.contains(machina::names::NAME_PATTERN.replace('\\', "\\\\").as_str()));
    assert!(Path::new(&examples()).exists());
}

#[test]
fn gen_writes_a_swtpm_unit_and_removes_it_when_the_tpm_is_off() {
    let dir = TempDir::new("cli-tpm");
    std::fs::create_dir_all(dir.0.join("config/machine.conf.d")).unwrap();
    let mut host: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(examples().join("machina.conf.json")).unwrap(),
    )
    .unwrap();
    host["storage"]["tpm"] =
        serde_json::json!({"path": "/var/lib/machina/tpm", "type": "tpm-data"});
    std::fs::write(dir.0.join("config/machina.conf.json"), host.to_string()).unwrap();
    let write_vm = |attrs: serde_json::Value| {
        let vm = serde_json::json!({"id": "6f1c7a52-8f0e-4d5b-9a43-2b7e0c1d9e11", "attrs": attrs});
        std::fs::write(
            dir.0.join("config/machine.conf.d/tpm.conf.json"),
            vm.to_string(),
        )
        .unwrap();
    };
    let run = |args: &[&str]| {
        Command::new(common::bin("machina"))
            .arg("--config-dir")
            .arg(dir.0.join("config"))
            .args(args)
            .output()
            .unwrap()
    };
    write_vm(serde_json::json!({"memory": {"ram": 512}, "tpm": {"enabled": true}}));
    // args shows the Go hardware (tpm-crb on the swtpm socket)…
    assert!(
        stdout(&run(&["args", "tpm"])).contains("-tpmdev emulator,id=tpm.0,chardev=tpm.0.socket")
    );
    // …but gen needs a place for the TPM's state, as the Go program does.
    let root = dir.0.join("root");
    let o = run(&["gen", "--root", root.to_str().unwrap(), "tpm"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("tpm.conf.json: attrs.tpm.data: a TPM needs a state directory"),
        "{err}"
    );
    assert!(!root.exists(), "nothing written");
    // With attrs.tpm.data: the swtpm unit, bound to by the QEMU unit.
    write_vm(
        serde_json::json!({"memory": {"ram": 512}, "tpm": {"enabled": true, "data": {"storage": "tpm", "name": "w11"}}}),
    );
    stdout(&run(&["gen", "--root", root.to_str().unwrap(), "tpm"]));
    let units = root.join("etc/systemd/system");
    let swtpm = std::fs::read_to_string(units.join("machina-swtpm-tpm.service")).unwrap();
    assert!(
        swtpm.contains("ExecStart=/usr/bin/machina-launch --swtpm tpm"),
        "{swtpm}"
    );
    assert!(swtpm.contains("NoNewPrivileges=yes"), "{swtpm}");
    assert!(
        swtpm.contains("ReadWritePaths=-/var/lib/machina/tpm"),
        "{swtpm}"
    );
    let qemu = std::fs::read_to_string(units.join("machina-qemu-tpm.service")).unwrap();
    assert!(qemu.contains("BindsTo=machina-swtpm-tpm.service"), "{qemu}");
    assert!(qemu.contains("After=machina-swtpm-tpm.service"), "{qemu}");
    let plan = std::fs::read_to_string(root.join("etc/machina/launch/tpm.json")).unwrap();
    assert!(
        plan.contains("\"data-dir\": \"/var/lib/machina/tpm/w11.tpm-data\""),
        "{plan}"
    );
    assert!(
        plan.contains("\"socket\": \"/run/machina/tpm/swtpm/control.socket\""),
        "{plan}"
    );
    // TPM off: the unit goes (the state directory is guest data, untouched).
    write_vm(serde_json::json!({"memory": {"ram": 512}}));
    stdout(&run(&["gen", "--root", root.to_str().unwrap(), "tpm"]));
    assert!(!units.join("machina-swtpm-tpm.service").exists());
    let qemu = std::fs::read_to_string(units.join("machina-qemu-tpm.service")).unwrap();
    assert!(!qemu.contains("swtpm"), "{qemu}");
}

/// The schema shipped in `docs/` is the one the binary prints, and
/// `inspect --json` of the examples (not generated: no plan, no unit)
/// validates against it.
#[test]
fn inspect_json_matches_the_shipped_schema() {
    let shipped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/inspect.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let printed: serde_json::Value =
        serde_json::from_str(&stdout(&machina(&["schema", "inspect"]))).unwrap();
    assert_eq!(
        shipped, printed,
        "docs/inspect.schema.json is stale: run `machina schema inspect > docs/inspect.schema.json`"
    );
    let validator = jsonschema::validator_for(&shipped).unwrap();
    let out: serde_json::Value = serde_json::from_str(&stdout(&machina(&[
        "inspect", "--json", "desk-042", "web-01",
    ])))
    .unwrap();
    let errors: Vec<String> = validator.iter_errors(&out).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{out:#}");
    assert_eq!(out[1]["name"], "web-01");
    assert_eq!(out[1]["state"], "stopped");
    assert_eq!(
        out[1]["volumes"][0]["path"],
        "/srv/machina/disks/web-01/os.raw"
    );
    // attrs.console: the socket `machina console` attaches to, and its log.
    assert_eq!(
        out[1]["console"]["socket"],
        "/run/machina/web-01/console.sock"
    );
    assert_eq!(out[1]["console"]["log"], "/run/machina/web-01/console.log");
    assert_eq!(out[0]["console"], serde_json::Value::Null, "{out:#}");
    // A wrong document is refused: the test would catch a drift.
    let mut bad = out.clone();
    bad[0]["state"] = "sleeping".into();
    assert!(!validator.is_valid(&bad));
    let text = stdout(&machina(&["inspect", "web-01"]));
    assert!(text.starts_with("web-01\n  uuid: "), "{text}");
    assert!(
        text.contains(
            "\n  console: /run/machina/web-01/console.sock (log /run/machina/web-01/console.log)\n"
        ),
        "{text}"
    );
}
