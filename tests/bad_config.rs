//! A table of bad configurations: each must exit non-zero with exactly one
//! clear line on stderr naming the file (and the key), without a panic, and
//! without writing anything.

mod common;

use common::TempDir;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

fn base_host() -> Value {
    json!({
        "storage": {
            "data": {"path": "/srv/vm", "pattern": "${machine-name}/${volume}.raw", "type": "raw"},
            "blk": {"path": "/srv/vm", "type": "raw-block"},
            "iso": {"path": "/srv/iso", "pattern": "${volume}.iso", "type": "iso-ahci"},
            "iso-scsi": {"path": "/srv/iso", "pattern": "${volume}.iso", "type": "iso-scsi"},
            "fw": {"path": "/usr/share/OVMF", "pattern": "${volume}.fd", "type": "firmware", "readonly": true}
        },
        "network": {"lan": {"device": "br0"}},
        "mediated-device": {"gpu": {"address": "0000:c1:00.0", "classes": {"vgpu": {"name": "GRID-1Q"}}}},
        "tag": {"small": {"attrs": {"memory": {"ram": 512}}}}
    })
}

fn base_machine() -> Value {
    json!({
        "id": "11111111-2222-4333-8444-555555555555",
        "tags": ["small"],
        "vars": {"seat": "7"},
        "attrs": {"qmp": {"enabled": true}},
        "volumes": [{"name": "os", "storage": "data", "bootable": true}],
        "connections": [{"name": "0", "network": "lan"}]
    })
}

enum Case {
    /// Patch the parsed JSON.
    Json(fn(&mut Value, &mut Value)),
    /// Raw text for (host, machine); None keeps the base.
    Text(Option<&'static str>, Option<&'static str>),
}

struct Bad {
    name: &'static str,
    case: Case,
    /// Which file the message must name.
    file: &'static str,
    /// Fragments the message must contain.
    expect: &'static [&'static str],
}

fn cases() -> Vec<Bad> {
    use Case::*;
    const M: &str = "vm.conf.json";
    const H: &str = "machina.conf.json";
    vec![
        Bad {
            name: "machine JSON syntax",
            case: Text(None, Some("{\n  \"tags\": [\"small\",]\n}")),
            file: M,
            expect: &["vm.conf.json:2:"],
        },
        Bad {
            name: "host JSON syntax",
            case: Text(Some("{\"storage\": {"), None),
            file: H,
            expect: &["machina.conf.json:1:"],
        },
        Bad {
            name: "trailing content",
            case: Text(None, Some("{\"attrs\": {\"memory\": {\"ram\": 1}}} {}")),
            file: M,
            expect: &["trailing"],
        },
        Bad {
            name: "empty machine file",
            case: Text(None, Some("")),
            file: M,
            expect: &["EOF"],
        },
        Bad {
            name: "unknown machine key",
            case: Json(|_, m| {
                m["tagz"] = json!([]);
            }),
            file: M,
            expect: &["\"tagz\"", "did you mean \"tags\""],
        },
        Bad {
            name: "unknown nested key",
            case: Json(|_, m| {
                m["attrs"]["memory"] = json!({"rma": 1});
            }),
            file: M,
            expect: &["attrs.memory", "did you mean \"ram\""],
        },
        Bad {
            name: "case-mismatched key",
            case: Json(|_, m| {
                m["attrs"]["memory"] = json!({"RAM": 1});
            }),
            file: M,
            expect: &["did you mean \"ram\""],
        },
        Bad {
            name: "unknown pool key",
            case: Json(|h, _| {
                h["storage"]["data"]["paht"] = json!("/x");
            }),
            file: H,
            expect: &["storage.data", "did you mean \"path\""],
        },
        Bad {
            name: "unknown host key",
            case: Json(|h, _| {
                h["networks"] = json!({});
            }),
            file: H,
            expect: &["did you mean \"network\""],
        },
        Bad {
            name: "unknown storage type",
            case: Json(|h, _| {
                h["storage"]["data"]["type"] = json!("iso");
            }),
            file: H,
            expect: &["storage.data.type", "unknown value \"iso\""],
        },
        Bad {
            name: "type mismatch",
            case: Json(|_, m| {
                m["attrs"]["memory"] = json!({"ram": "lots"});
            }),
            file: M,
            expect: &["attrs.memory.ram", "invalid type"],
        },
        Bad {
            name: "negative RAM",
            case: Json(|_, m| {
                m["attrs"]["memory"] = json!({"ram": -1});
            }),
            file: M,
            expect: &["attrs.memory.ram"],
        },
        Bad {
            name: "bad UUID",
            case: Json(|_, m| {
                m["id"] = json!("not-a-uuid");
            }),
            file: M,
            expect: &["id"],
        },
        Bad {
            name: "missing RAM",
            case: Json(|_, m| {
                m["tags"] = json!([]);
            }),
            file: M,
            expect: &["attrs.memory.ram", "no RAM"],
        },
        Bad {
            name: "missing tag",
            case: Json(|_, m| {
                m["tags"] = json!(["big"]);
            }),
            file: M,
            expect: &["tags[0]", "\"big\" is not defined"],
        },
        Bad {
            name: "missing pool",
            case: Json(|_, m| {
                m["volumes"][0]["storage"] = json!("nope");
            }),
            file: M,
            expect: &["volumes[0].storage", "\"nope\""],
        },
        Bad {
            name: "missing network",
            case: Json(|_, m| {
                m["connections"][0]["network"] = json!("wan");
            }),
            file: M,
            expect: &["connections[0].network", "\"wan\""],
        },
        Bad {
            name: "missing device class",
            case: Json(|_, m| {
                m["devices"] = json!([{"name": "g", "class": "nope"}]);
            }),
            file: M,
            expect: &["devices[0].class", "\"nope\""],
        },
        Bad {
            name: "volume name injection",
            case: Json(|_, m| {
                m["volumes"][0]["name"] = json!("os,file.locking=off");
            }),
            file: M,
            expect: &["volumes[0].name", "','"],
        },
        Bad {
            name: "connection name injection",
            case: Json(|_, m| {
                m["connections"][0]["name"] = json!("0,mac=x");
            }),
            file: M,
            expect: &["connections[0].name"],
        },
        Bad {
            name: "device name injection",
            case: Json(|_, m| {
                m["devices"] = json!([{"name": "g=1", "class": "vgpu"}]);
            }),
            file: M,
            expect: &["devices[0].name"],
        },
        Bad {
            name: "tag name injection",
            case: Json(|_, m| {
                m["tags"] = json!(["small\nExecStartPre=/bin/sh"]);
            }),
            file: M,
            expect: &["tags[0]"],
        },
        Bad {
            name: "machine name override",
            case: Json(|_, m| {
                m["name"] = json!("x\n[Service]");
            }),
            file: M,
            expect: &["name", "differs from the file name"],
        },
        Bad {
            name: "network name injection",
            case: Json(|h, _| {
                h["network"] = json!({"lan,x": {"device": "br0"}});
            }),
            file: H,
            expect: &["network"],
        },
        Bad {
            name: "bridge name too long",
            case: Json(|h, _| {
                h["network"]["lan"]["device"] = json!("a-very-long-bridge-name");
            }),
            file: H,
            expect: &["network.lan.device", "15 bytes"],
        },
        Bad {
            name: "pool name traversal",
            case: Json(|h, _| {
                h["storage"]["../x"] = json!({"path": "/x", "type": "raw"});
            }),
            file: H,
            expect: &["storage"],
        },
        Bad {
            name: "var path traversal",
            case: Json(|h, m| {
                h["storage"]["data"]["pattern"] = json!("${dir}/${volume}.raw");
                m["vars"]["dir"] = json!("../../etc");
            }),
            file: M,
            expect: &["volumes[0]", "not inside the pool directory"],
        },
        Bad {
            name: "relative pool path",
            case: Json(|h, _| {
                h["storage"]["data"]["path"] = json!("srv/vm");
            }),
            file: H,
            expect: &["storage.data.path", "absolute"],
        },
        Bad {
            name: "privileged spice port",
            case: Json(|_, m| {
                m["attrs"]["spice"] = json!({"enabled": true, "port": 80});
            }),
            file: M,
            expect: &["attrs.spice.port", "1024"],
        },
        Bad {
            name: "port out of range",
            case: Json(|_, m| {
                m["attrs"]["agent"] = json!({"qemu": {"enabled": true, "port": 70000}});
            }),
            file: M,
            expect: &["attrs.agent.qemu.port", "65535"],
        },
        Bad {
            name: "port pattern not a number",
            case: Json(|_, m| {
                m["attrs"]["spice"] = json!({"enabled": true, "port-pattern": "59${seat}x"});
            }),
            file: M,
            expect: &["attrs.spice.port-pattern", "not a number"],
        },
        Bad {
            name: "port pattern arithmetic error",
            case: Json(|_, m| {
                m["attrs"]["spice"] =
                    json!({"enabled": true, "port-pattern": "$((5900/(${seat}-7)))"});
            }),
            file: M,
            expect: &["attrs.spice.port-pattern", "division by zero"],
        },
        Bad {
            name: "spice without port",
            case: Json(|_, m| {
                m["attrs"]["spice"] = json!({"enabled": true});
            }),
            file: M,
            expect: &["attrs.spice.port-pattern", "no port"],
        },
        Bad {
            name: "bad WWN hex",
            case: Json(|_, m| {
                m["volumes"][0]["wwn"] = json!("0xZZ");
            }),
            file: M,
            expect: &["volumes[0].wwn", "not hexadecimal"],
        },
        Bad {
            name: "WWN too long",
            case: Json(|_, m| {
                m["volumes"][0]["wwn"] = json!(format!("0x6{}", "0".repeat(35)));
            }),
            file: M,
            expect: &["volumes[0].wwn", "longer than 16 bytes"],
        },
        Bad {
            name: "WWN bad NAA",
            case: Json(|_, m| {
                m["volumes"][0]["wwn"] = json!("0x3000000000000000");
            }),
            file: M,
            expect: &["volumes[0].wwn", "network address authority"],
        },
        Bad {
            name: "WWN wrong length",
            case: Json(|_, m| {
                m["volumes"][0]["wwn"] = json!("0x5000c500");
            }),
            file: M,
            expect: &["volumes[0].wwn", "should be 8"],
        },
        Bad {
            name: "bad MAC",
            case: Json(|_, m| {
                m["connections"][0]["mac"] = json!("52:54:00:12:34");
            }),
            file: M,
            expect: &["connections[0].mac", "not a MAC"],
        },
        Bad {
            name: "MAC injection",
            case: Json(|_, m| {
                m["connections"][0]["mac"] = json!("52:54:00:12:34:56,romfile=/x");
            }),
            file: M,
            expect: &["connections[0].mac"],
        },
        Bad {
            name: "multicast MAC",
            case: Json(|_, m| {
                m["connections"][0]["mac"] = json!("01:00:5e:00:00:01");
            }),
            file: M,
            expect: &["connections[0].mac", "multicast"],
        },
        Bad {
            name: "serial with newline",
            case: Json(|_, m| {
                m["volumes"][0]["serial"] = json!("abc\ndef");
            }),
            file: M,
            expect: &["volumes[0].serial", "control character"],
        },
        Bad {
            name: "description with newline",
            case: Json(|_, m| {
                m["description"] = json!("x\nExecStart=/bin/sh");
            }),
            file: M,
            expect: &["description", "control character"],
        },
        Bad {
            name: "root complex full",
            case: Json(|_, m| {
                m["connections"] = json!((0..260)
                    .map(|i| json!({"name": format!("n{i}"), "network": "lan"}))
                    .collect::<Vec<_>>());
            }),
            file: M,
            expect: &["connections[", "root complex is full"],
        },
        Bad {
            name: "SATA full",
            case: Json(|_, m| {
                m["volumes"] = json!((0..7)
                    .map(|i| json!({"name": format!("cd{i}"), "storage": "iso"}))
                    .collect::<Vec<_>>());
            }),
            file: M,
            expect: &["volumes[6]", "SATA controller is full"],
        },
        Bad {
            name: "SCSI full",
            case: Json(|_, m| {
                m["volumes"] = json!((0..29)
                    .map(|i| json!({"name": format!("d{i}"), "storage": "data"}))
                    .collect::<Vec<_>>());
            }),
            file: M,
            expect: &["volumes[28]", "SCSI controller is full"],
        },
        Bad {
            name: "firmware vars without code",
            case: Json(|_, m| {
                m["attrs"]["firmware"] = json!({"vars": {"name": "v", "storage": "fw"}});
            }),
            file: M,
            expect: &["attrs.firmware.vars", "code is not"],
        },
        Bad {
            name: "firmware on a disk pool",
            case: Json(|_, m| {
                m["attrs"]["firmware"] = json!({"code": {"name": "code", "storage": "data"}});
            }),
            file: M,
            expect: &["attrs.firmware.code.storage", "type \"firmware\""],
        },
        Bad {
            name: "relative QEMU binary",
            case: Json(|h, _| {
                h["qemu"] = json!({"binary": "qemu-system-x86_64"});
            }),
            file: H,
            expect: &["qemu.binary", "absolute"],
        },
        Bad {
            name: "CPU model injection",
            case: Json(|h, _| {
                h["qemu"] = json!({"cpu-model": "host,+vmx"});
            }),
            file: H,
            expect: &["qemu.cpu-model"],
        },
        Bad {
            name: "unknown accelerator",
            case: Json(|h, _| {
                h["qemu"] = json!({"accelerator": "hvf"});
            }),
            file: H,
            expect: &["qemu.accelerator", "\"hvf\""],
        },
        Bad {
            name: "relative QMP socket path",
            case: Json(|_, m| {
                m["attrs"]["qmp"]["sockets"] = json!({"paths": ["qmp.sock"]});
            }),
            file: M,
            expect: &["attrs.qmp.sockets.paths", "absolute"],
        },
        Bad {
            name: "QMP socket name traversal",
            case: Json(|_, m| {
                m["attrs"]["qmp"]["sockets"] = json!({"names": ["../../etc/x"]});
            }),
            file: M,
            expect: &["attrs.qmp.sockets.names"],
        },
        Bad {
            name: "mdev address traversal",
            case: Json(|h, m| {
                h["mediated-device"]["gpu"]["address"] = json!("../../../x");
                m["devices"] = json!([{"name": "g", "class": "vgpu"}]);
            }),
            file: H,
            expect: &["mediated-device.gpu.address", "PCI address"],
        },
        Bad {
            name: "id range over container ids",
            case: Json(|h, _| {
                h["id-range"] = json!({"first": 70000, "last": 600000});
            }),
            file: H,
            expect: &["id-range", "524288"],
        },
        Bad {
            name: "system group id",
            case: Json(|_, m| {
                m["privileges"] = json!({"filesystem": {"group": {"id": 100}}});
            }),
            file: M,
            expect: &["privileges.filesystem.group.id", "unprivileged"],
        },
        Bad {
            name: "node name too long",
            case: Json(|_, m| {
                m["volumes"][0]["name"] = json!("a-rather-long-volume-name-here");
            }),
            file: M,
            expect: &["volumes[0].name", "31 characters"],
        },
        Bad {
            name: "too many queues",
            case: Json(|_, m| {
                m["connections"][0]["queues"] = json!(64);
            }),
            file: M,
            expect: &["connections[0].queues", "16"],
        },
        Bad {
            name: "duplicate key",
            case: Text(None, Some("{\"tags\": [\"small\"], \"tags\": []}")),
            file: M,
            expect: &["duplicate field"],
        },
    ]
}

fn write_case(dir: &Path, case: &Case) {
    std::fs::create_dir_all(dir.join("machine.conf.d")).unwrap();
    let (mut h, mut m) = (base_host(), base_machine());
    let (host, machine) = match case {
        Case::Json(f) => {
            f(&mut h, &mut m);
            (h.to_string(), m.to_string())
        }
        Case::Text(ht, mt) => (
            ht.map(str::to_owned).unwrap_or_else(|| h.to_string()),
            mt.map(str::to_owned).unwrap_or_else(|| m.to_string()),
        ),
    };
    std::fs::write(dir.join("machina.conf.json"), host).unwrap();
    std::fs::write(dir.join("machine.conf.d/vm.conf.json"), machine).unwrap();
}

#[test]
fn base_config_is_valid() {
    let dir = TempDir::new("bad-base");
    write_case(&dir.0, &Case::Json(|_, _| {}));
    let out = Command::new(common::bin("machina"))
        .arg("--config-dir")
        .arg(&dir.0)
        .args(["args", "vm"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_configurations_fail_cleanly() {
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for (i, bad) in cases.iter().enumerate() {
        let dir = TempDir::new(&format!("bad-{i}"));
        write_case(&dir.0, &bad.case);
        let plan_dir = dir.0.join("plans");
        for cmd in [
            &["args", "vm"][..],
            &["gen", "--root", dir.0.to_str().unwrap(), "vm"][..],
        ] {
            let out = Command::new(common::bin("machina"))
                .arg("--config-dir")
                .arg(&dir.0)
                .args(cmd)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = err.lines().collect();
            let ok = out.status.code() == Some(1)
                && lines.len() == 1
                && lines[0].contains(bad.file)
                && bad.expect.iter().all(|e| lines[0].contains(e))
                && !err.contains("panicked");
            if !ok {
                failures.push(format!(
                    "{} ({}): exit {:?}, stderr {err:?}",
                    bad.name,
                    cmd[0],
                    out.status.code()
                ));
            }
        }
        assert!(
            !plan_dir.exists() && !dir.0.join("etc").exists(),
            "{}: gen wrote files",
            bad.name
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
