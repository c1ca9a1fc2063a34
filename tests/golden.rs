//! Golden tests against the Go machina's outputs for the README example
//! (`tests/data/go/`, recorded from the Go program), and its identity vectors.

mod common;

use std::path::Path;
use std::process::Command;

fn machina(config_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::bin("machina"))
        .arg("--config-dir")
        .arg(config_dir)
        .args(args)
        .output()
        .expect("run machina");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Splits an argv line into (option, parameters) pairs.
fn options(line: &str) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for word in line.split_whitespace() {
        if word.starts_with('-') {
            out.push((word.to_owned(), None));
        } else {
            out.last_mut().expect("starts with an option").1 = Some(word.to_owned());
        }
    }
    out
}

/// The Go args with the deliberate differences removed: `-netdev` backends
/// (TAP fds instead of ifname/script) and the added `-sandbox`.
fn comparable(line: &str) -> Vec<(String, Option<String>)> {
    options(line)
        .into_iter()
        .filter(|(o, _)| o != "-netdev" && o != "-sandbox")
        .collect()
}

fn check_args(config_dir: &Path) {
    let golden = common::golden_dir().join("readme-example");
    let want = std::fs::read_to_string(golden.join("go-args.txt")).unwrap();
    let (code, got, err) = machina(config_dir, &["args", "test-vm"]);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(comparable(&got), comparable(&want));
    let ours = options(&got);
    let netdev = ours.iter().find(|(o, _)| o == "-netdev").unwrap();
    assert_eq!(
        netdev.1.as_deref(),
        Some("tap,id=net.0,fd=3,vhost=on,vhostfd=4")
    );
    let sandbox = ours.last().unwrap();
    assert_eq!(sandbox.0, "-sandbox");
    assert_eq!(
        sandbox.1.as_deref(),
        Some("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")
    );
}

#[test]
fn args_match_go_for_readme_example() {
    check_args(&common::golden_dir().join("readme-example"));
}

#[test]
fn args_match_go_with_legacy_mdev_host_file() {
    let golden = common::golden_dir().join("readme-example");
    let dir = tempfile_dir("legacy");
    std::fs::copy(
        golden.join("machina.legacy-mdev.conf.json"),
        dir.join("machina.conf.json"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("machine.conf.d")).unwrap();
    std::fs::copy(
        golden.join("machine.conf.d/test-vm.conf.json"),
        dir.join("machine.conf.d/test-vm.conf.json"),
    )
    .unwrap();
    check_args(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cat_matches_go_except_group_line() {
    let golden = common::golden_dir().join("readme-example");
    let want = std::fs::read_to_string(golden.join("go-cat.txt")).unwrap();
    let (code, got, err) = machina(&golden, &["cat", "test-vm"]);
    assert_eq!(code, 0, "stderr: {err}");
    // machina adds where a tag's volume, connection or device came from.
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.trim_start().starts_with("File System Access Group:"))
            .map(|l| match l.find(", from tag ") {
                Some(i) => format!("{}{}", &l[..i], &l[l[i..].find(')').unwrap() + i..]),
                None => l.to_owned(),
            })
            .collect()
    };
    assert!(
        got.contains("bootable, from tag vdi-cad)"),
        "cat names the tag of each volume: {got}"
    );
    assert_eq!(strip(&got), strip(&want));
    let group = got
        .lines()
        .find(|l| l.contains("File System Access Group:"))
        .unwrap();
    let id: u32 = group.rsplit(':').next().unwrap().trim().parse().unwrap();
    assert!((65536..=524287).contains(&id), "{group}");
}

#[test]
fn identity_vectors_match_go() {
    use machina::identity::*;
    let text = std::fs::read_to_string(common::golden_dir().join("identities.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for m in v["machines"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let id: uuid::Uuid = m["id"].as_str().unwrap().parse().unwrap();
        for (conn, mac) in m["macs"].as_object().unwrap() {
            assert_eq!(connection_mac(&id, name, conn), mac.as_str().unwrap());
            checked += 1;
        }
        for (vol, wwn) in m["wwns"].as_object().unwrap() {
            assert_eq!(
                volume_wwn(&id, name, vol).to_string(),
                wwn.as_str().unwrap()
            );
            checked += 1;
        }
        for (vol, serial) in m["serials"].as_object().unwrap() {
            assert_eq!(volume_serial(&id, name, vol), serial.as_str().unwrap());
            checked += 1;
        }
        let class = if name == "test-vm" {
            "cad-standard"
        } else {
            "vgpu"
        };
        for (dev, uuid) in m["devices"].as_object().unwrap() {
            assert_eq!(
                device_uuid(&id, name, class, dev).to_string(),
                uuid.as_str().unwrap()
            );
            checked += 1;
        }
        assert_eq!(
            go_group_id(&id, name),
            Some(m["go_group_id_round0_unrestricted"].as_u64().unwrap() as u32)
        );
        checked += 1;
    }
    assert!(checked >= 17, "only {checked} vectors checked");
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("machina-golden-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
