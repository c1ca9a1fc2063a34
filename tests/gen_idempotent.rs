//! Idempotent `machina gen` (issue 12, item 2): an unchanged file is not
//! rewritten (same inode, same mtime), one line per file written, `--json`,
//! `--check` writes nothing and exits 1 when something would change; under
//! a real systemd (systemd-nspawn) a second `gen` reloads nothing, and
//! `status --json` says when a running VM needs a restart for a new plan.

mod common;

use common::TempDir;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::nspawn::{Container, BIN_MOUNT};
use serde_json::json;

fn machina(config: &Path, args: &[&str]) -> Output {
    std::process::Command::new(common::bin("machina"))
        .arg("--config-dir")
        .arg(config)
        .args(args)
        .output()
        .expect("run machina")
}

/// What tells a rewrite apart: `gen` replaces a file by renaming a new one
/// over it (a new inode), and the mtime.
fn identity(p: &Path) -> (u64, i64, i64, Vec<u8>) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (
        m.ino(),
        m.mtime(),
        m.mtime_nsec(),
        std::fs::read(p).unwrap(),
    )
}

fn lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn copy_examples(to: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    std::fs::create_dir_all(to.join("machine.conf.d")).unwrap();
    std::fs::copy(src.join("machina.conf.json"), to.join("machina.conf.json")).unwrap();
    for vm in ["web-01", "test-vm"] {
        let f = format!("machine.conf.d/{vm}.conf.json");
        std::fs::copy(src.join(&f), to.join(&f)).unwrap();
    }
}

#[test]
fn second_gen_writes_nothing_and_check_reports_an_edit() {
    let tmp = TempDir::new("gen-idem");
    let config = tmp.0.join("config");
    copy_examples(&config);
    let root = tmp.0.join("root");
    let r = root.to_str().unwrap();
    let files: Vec<PathBuf> = [
        "etc/machina/launch/web-01.json",
        "etc/systemd/system/machina-machined-web-01.service",
        "etc/systemd/system/machina-qemu-web-01.service",
        "etc/machina/launch/test-vm.json",
        "etc/systemd/system/machina-machined-test-vm.service",
        "etc/systemd/system/machina-qemu-test-vm.service",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();

    // --check before anything exists: all six would be written, none is.
    let o = machina(
        &config,
        &["gen", "--check", "--root", r, "web-01", "test-vm"],
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let want: Vec<String> = shown.iter().map(|p| format!("would write {p}")).collect();
    assert_eq!(lines(&o), want);
    assert!(!root.exists(), "--check wrote something");

    // First gen: one line per file written.
    let o = machina(&config, &["gen", "--root", r, "web-01", "test-vm"]);
    assert!(o.status.success(), "{o:?}");
    let want: Vec<String> = shown.iter().map(|p| format!("wrote {p}")).collect();
    assert_eq!(lines(&o), want);
    let before: Vec<_> = files.iter().map(|f| identity(f)).collect();

    // Second gen: nothing written, nothing printed; --json lists them all
    // as unchanged; --check agrees.
    let o = machina(&config, &["gen", "--root", r, "web-01", "test-vm"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(lines(&o), Vec::<String>::new());
    let o = machina(
        &config,
        &["gen", "--json", "--root", r, "web-01", "test-vm"],
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(json_of(&o), json!({"changed": [], "unchanged": shown}));
    let o = machina(
        &config,
        &["gen", "--check", "--root", r, "web-01", "test-vm"],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(lines(&o), Vec::<String>::new());
    let after: Vec<_> = files.iter().map(|f| identity(f)).collect();
    assert_eq!(before, after, "an unchanged file was rewritten");

    // Edit one machine: --check names only its plan, exits 1, writes nothing.
    let vm_file = config.join("machine.conf.d/web-01.conf.json");
    let mut vm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&vm_file).unwrap()).unwrap();
    vm["attrs"] = json!({"memory": {"ram": 4096}});
    std::fs::write(&vm_file, vm.to_string()).unwrap();
    let o = machina(
        &config,
        &["gen", "--check", "--json", "--root", r, "web-01", "test-vm"],
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v = json_of(&o);
    assert_eq!(v["changed"], json!([shown[0]]), "{v}");
    assert_eq!(v["unchanged"], json!(shown[1..]), "{v}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 of 6 files would change"));
    let after: Vec<_> = files.iter().map(|f| identity(f)).collect();
    assert_eq!(before, after, "--check wrote something");

    // gen writes exactly that file.
    let o = machina(
        &config,
        &["gen", "--json", "--root", r, "web-01", "test-vm"],
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        json_of(&o),
        json!({"changed": [shown[0]], "unchanged": shown[1..]})
    );
    let after: Vec<_> = files.iter().map(|f| identity(f)).collect();
    assert_ne!(before[0], after[0]);
    assert_eq!(before[1..], after[1..]);
    let plan = machina::plan::Plan::from_json(&String::from_utf8_lossy(&after[0].3)).unwrap();
    assert!(
        plan.qemu.args.iter().any(|a| a == "size=4096M"),
        "{:?}",
        plan.qemu.args
    );

    // A wrong mode is a change; a symlink in a file's place is replaced,
    // never written through.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&files[3], std::fs::Permissions::from_mode(0o600)).unwrap();
    let elsewhere = tmp.0.join("elsewhere");
    std::fs::write(&elsewhere, "keep").unwrap();
    std::fs::remove_file(&files[5]).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &files[5]).unwrap();
    let o = machina(&config, &["gen", "--root", r, "test-vm"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        lines(&o),
        [format!("wrote {}", shown[3]), format!("wrote {}", shown[5])]
    );
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "keep");
    assert!(std::fs::symlink_metadata(&files[5]).unwrap().is_file());
    assert_eq!(std::fs::metadata(&files[3]).unwrap().mode() & 0o7777, 0o644);
    assert_eq!(identity(&files[5]).3, before[5].3);

    // --preview conflicts with --check and --json (usage error).
    let o = machina(&config, &["gen", "--preview", "--check", "web-01"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Polls `cond` every 50 ms until it holds (an event: the unit's state or
/// QMP answering), failing with the unit's journal after `timeout`.
fn wait_until(c: &Container, unit: &str, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}; journal:\n{}",
            c.journal(unit)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn gen_under_systemd_reloads_only_for_a_changed_unit_and_status_says_restart() {
    const TEST: &str = "gen_under_systemd_reloads_only_for_a_changed_unit_and_status_says_restart";
    let Some(qemu) = common::privileged(TEST) else {
        return;
    };
    let vm = format!("idem{}", std::process::id());
    let unit = format!("machina-qemu-{vm}.service");
    let canary = format!("machina-canary-{}.service", std::process::id());
    let bin_dir = common::bin("machina").parent().unwrap().to_owned();
    let Some(c) = Container::boot(TEST, &bin_dir) else {
        return;
    };
    let machina_in = format!("{BIN_MOUNT}/machina");
    // A VM without disks or NICs: QEMU (TCG) sits in its firmware, which is
    // all a restart check needs.
    let host = json!({
        "qemu": {"binary": qemu, "accelerator": "tcg", "cpu-model": "qemu64", "vhost": false, "nic-option-rom": false},
    });
    let machine = |ram: u64| {
        json!({
            "id": "0b5e55ed-0000-4000-8000-000000000012",
            "attrs": {"memory": {"ram": ram}, "qmp": {"enabled": true}},
        })
        .to_string()
    };
    c.write_file("/etc/machina/machina.conf.json", &host.to_string(), 0o644);
    let vm_file = format!("/etc/machina/machine.conf.d/{vm}.conf.json");
    c.write_file(&vm_file, &machine(128), 0o644);
    let gen = |extra: &[&str]| -> Output {
        let mut args = vec![machina_in.as_str(), "gen", "--bin-dir", BIN_MOUNT];
        args.extend_from_slice(extra);
        args.push(&vm);
        c.exec(&args)
    };
    let need_reload = |u: &str| -> bool {
        c.systemctl()
            .status(&[u.to_owned()])
            .unwrap()
            .remove(0)
            .need_daemon_reload
    };
    let status = || -> serde_json::Value {
        let s = c.exec_ok(&[&machina_in, "status", "--json", &vm]);
        serde_json::from_str::<serde_json::Value>(&s).unwrap()["machines"][0].clone()
    };

    // A canary unit whose file changes behind systemd's back: it stays
    // "needs daemon-reload" until someone reloads (it runs, so systemd
    // keeps it loaded).
    let canary_text = "[Service]\nExecStart=/bin/sleep infinity\n";
    c.write_unit(&canary, canary_text);
    c.daemon_reload();
    c.exec_ok(&["systemctl", "start", &canary]);
    c.write_unit(&canary, &format!("{canary_text}# edited\n"));
    assert!(need_reload(&canary));

    // First gen writes the three files (plan, unit, machined registration
    // unit) and reloads (the canary is reloaded too).
    let o = gen(&[]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(lines(&o).len(), 3, "{o:?}");
    assert!(!need_reload(&canary), "the first gen reloaded systemd");
    assert!(!need_reload(&unit));

    // Second gen: nothing written, no reload (the canary still waits).
    c.write_unit(&canary, &format!("{canary_text}# edited twice\n"));
    assert!(need_reload(&canary));
    let plan_host = c.path(&format!("/etc/machina/launch/{vm}.json"));
    let unit_host = c.path(&format!("/etc/systemd/system/{unit}"));
    let before = (identity(&plan_host), identity(&unit_host));
    let o = gen(&[]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(lines(&o), Vec::<String>::new());
    assert_eq!(before, (identity(&plan_host), identity(&unit_host)));
    assert!(
        need_reload(&canary),
        "a gen that changed nothing reloaded systemd"
    );

    // The VM runs the installed plan: no restart needed.
    c.exec_ok(&["systemctl", "start", &unit]);
    wait_until(&c, &unit, "QMP to answer", || status()["qmp"] == true);
    let s = status();
    assert_eq!(s["needs-restart"], false, "{s}");
    assert_eq!(s["config-changed-since-gen"], false, "{s}");

    // An edit the unit does not see: the plan changes, the unit does not,
    // so no reload; the running VM now needs a restart.
    c.write_file(&vm_file, &machine(160), 0o644);
    let s = status();
    assert_eq!(s["config-changed-since-gen"], true, "{s}");
    assert_eq!(s["needs-restart"], false, "{s}");
    let o = gen(&["--json"]);
    assert!(o.status.success(), "{o:?}");
    let v = json_of(&o);
    assert_eq!(
        v["changed"],
        json!([format!("/etc/machina/launch/{vm}.json")]),
        "{v}"
    );
    assert!(need_reload(&canary), "a plan-only change reloaded systemd");
    let s = status();
    assert_eq!(s["config-changed-since-gen"], false, "{s}");
    assert_eq!(s["needs-restart"], true, "{s}");
    let text = c.exec_ok(&[&machina_in, "status", &vm]);
    assert!(text.contains("running an older launch plan"), "{text}");

    // After a restart the VM runs the new plan. (The guest has no OS to
    // answer the power button: QMP `quit` after 1 s, not the unit's long
    // orderly-shutdown timeout.)
    let stop = || {
        c.exec_ok(&[&machina_in, "shutdown", "--timeout", "1s", &vm]);
        wait_until(&c, &unit, "the unit to stop", || {
            let st = c.systemctl().status(std::slice::from_ref(&unit)).unwrap();
            matches!(st[0].active_state.as_str(), "inactive" | "failed")
        });
    };
    stop();
    c.exec_ok(&["systemctl", "start", &unit]);
    wait_until(&c, &unit, "QMP to answer after the restart", || {
        let s = status();
        s["qmp"] == true && s["needs-restart"] == false
    });

    // A plan changed with its old mtime put back (a restored copy) is still
    // seen: QEMU's command line differs from the plan's.
    let plan_text = std::fs::read_to_string(&plan_host).unwrap();
    let mtime = std::fs::metadata(&plan_host).unwrap().modified().unwrap();
    let edited = plan_text.replace("size=160M", "size=192M");
    assert_ne!(edited, plan_text);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&plan_host)
        .unwrap();
    std::io::Write::write_all(&mut &f, edited.as_bytes()).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let s = status();
    assert_eq!(s["needs-restart"], true, "{s}");

    // A unit change reloads.
    stop();
    std::fs::remove_file(&unit_host).unwrap();
    let o = gen(&[]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        lines(&o).contains(&format!("wrote /etc/systemd/system/{unit}")),
        "{o:?}"
    );
    assert!(
        !need_reload(&canary),
        "a changed unit did not reload systemd"
    );
    let s = status();
    assert_eq!(
        s["needs-restart"],
        serde_json::Value::Null,
        "not running: {s}"
    );
}

#[test]
fn every_broken_machine_is_reported_and_nothing_is_written() {
    let tmp = TempDir::new("gen-broken");
    let config = tmp.0.join("config");
    copy_examples(&config);
    for vm in ["bad-a", "bad-b"] {
        std::fs::write(
            config.join(format!("machine.conf.d/{vm}.conf.json")),
            r#"{"attrs": {"memory": {"rma": 1}}}"#,
        )
        .unwrap();
    }
    let root = tmp.0.join("root");
    let o = machina(
        &config,
        &[
            "gen",
            "--root",
            root.to_str().unwrap(),
            "bad-a",
            "web-01",
            "bad-b",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].contains("bad-a.conf.json") && lines[0].contains("rma"),
        "{err}"
    );
    assert!(
        lines[1].contains("bad-b.conf.json") && lines[1].contains("rma"),
        "{err}"
    );
    assert!(!root.exists(), "gen wrote files for a broken run");
}

/// `args` and `gen --preview` stream their output a block of VMs at a time
/// (issue 12): over more VMs than a block, the output is each VM's own, in
/// the order given, with the uids `gen` writes (ids are confirmed in order
/// across blocks); a broken VM in the middle is reported on stderr (one
/// line, exit 1) and the others are still printed, while `gen` proper
/// writes nothing.
#[test]
fn streamed_output_spans_blocks_in_order() {
    const N: usize = 600;
    let tmp = TempDir::new("gen-stream");
    let config = tmp.0.join("config");
    copy_examples(&config);
    let mut names = Vec::new();
    for i in 0..N {
        let name = format!("w{i:04}");
        let text = json!({
            "id": format!("5c0ffee0-7d3b-4c8a-9a57-{:012x}", 0x1000 + i),
            "tags": ["server", "uefi"],
            "volumes": [{"name": "os", "storage": "vm-disks"}],
            "connections": [{"name": "lan", "network": "local"}],
        });
        std::fs::write(
            config.join(format!("machine.conf.d/{name}.conf.json")),
            text.to_string(),
        )
        .unwrap();
        names.push(name);
    }
    let mut args: Vec<&str> = names.iter().map(String::as_str).collect();
    let root = tmp.0.join("root");
    let r = root.to_str().unwrap();

    // What `gen` writes, one VM at a time in one run: the reference.
    let mut gen = vec!["gen", "--root", r];
    gen.extend(&args);
    let o = machina(&config, &gen);
    assert!(o.status.success(), "{o:?}");
    let plan_of = |n: &str| {
        std::fs::read_to_string(root.join(format!("etc/machina/launch/{n}.json"))).unwrap()
    };

    // The same root: the same users, groups and existing plans.
    let mut preview = vec!["gen", "--preview", "--root", r];
    preview.extend(&args);
    let o = machina(&config, &preview);
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8(o.stdout).unwrap();
    let plans: Vec<&str> = text
        .split("\n----")
        .filter(|s| s.contains(".json----\n"))
        .collect();
    assert_eq!(plans.len(), N);
    // A blank line between two VMs, as before streaming.
    assert_eq!(text.matches("\n\n----").count(), N - 1);
    for (plan, name) in plans.iter().zip(&names) {
        let body = plan.split_once("----\n").unwrap().1;
        assert!(
            plan.contains(&format!("/{name}.json----")),
            "out of order at {name}"
        );
        // The plan in the preview is the one `gen` wrote (same uid).
        assert_eq!(body.trim_end(), plan_of(name).trim_end(), "{name}");
    }

    // One broken VM in the middle of the second block.
    std::fs::write(
        config.join("machine.conf.d/bad.conf.json"),
        r#"{"attrs": {"memory": {"rma": 1}}}"#,
    )
    .unwrap();
    args.insert(300, "bad");
    let o = machina(&config, &[&["args"][..], &args].concat());
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.conf.json") && err.contains("rma"),
        "{err}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let heads: Vec<&str> = out.lines().filter(|l| l.starts_with("----")).collect();
    assert_eq!(heads.len(), N, "every VM that built is printed");
    assert_eq!(heads[299], "----w0299----");
    assert_eq!(heads[300], "----w0300----");
    let single = machina(&config, &["args", "w0450"]);
    let line = String::from_utf8(single.stdout).unwrap();
    assert!(out.contains(&format!("----w0450----\n{line}")));

    let fresh = tmp.0.join("fresh");
    let o = machina(
        &config,
        &[&["gen", "--root", fresh.to_str().unwrap()][..], &args].concat(),
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(!fresh.exists(), "gen wrote files for a broken run");
}
