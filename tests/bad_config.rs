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
    /// No host file at all.
    NoHost,
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
            name: "machine without id",
            case: Json(|_, m| {
                m.as_object_mut().unwrap().remove("id");
            }),
            file: M,
            expect: &["vm.conf.json: id: no machine id", "machina gen-id"],
        },
        Bad {
            name: "nil machine id",
            case: Json(|_, m| {
                m["id"] = json!("00000000-0000-0000-0000-000000000000");
            }),
            file: M,
            expect: &["vm.conf.json:1:", ": id: the nil UUID", "machina gen-id"],
        },
        Bad {
            name: "zero cores",
            case: Json(|_, m| {
                m["attrs"]["cpu"] = json!({"cores": 0});
            }),
            file: M,
            expect: &["attrs.cpu.cores", "0 is not a count"],
        },
        Bad {
            name: "zero sockets in a tag",
            case: Json(|h, _| {
                h["tag"]["small"]["attrs"]["cpu"] = json!({"sockets": 0});
            }),
            file: H,
            expect: &["tag.small.attrs.cpu.sockets", "0 is not a count"],
        },
        Bad {
            name: "duplicate volume name",
            case: Json(|_, m| {
                m["volumes"] =
                    json!([{"name": "os", "storage": "data"}, {"name": "os", "storage": "blk"}]);
            }),
            file: M,
            expect: &[
                "volumes[1].name",
                "volume \"os\" is already defined at volumes[0]",
            ],
        },
        Bad {
            name: "duplicate connection name",
            case: Json(|_, m| {
                m["connections"] =
                    json!([{"name": "0", "network": "lan"}, {"name": "0", "network": "lan"}]);
            }),
            file: M,
            expect: &["connections[1].name", "connection \"0\" is already defined"],
        },
        Bad {
            name: "duplicate device name in a tag",
            case: Json(|h, _| {
                h["tag"]["small"]["devices"] =
                    json!([{"name": "g", "class": "vgpu"}, {"name": "g", "class": "vgpu"}]);
            }),
            file: H,
            expect: &[
                "tag.small.devices[1].name",
                "device \"g\" is already defined at tag.small.devices[0]",
            ],
        },
        Bad {
            name: "missing host file",
            case: NoHost,
            file: H,
            expect: &["host file ", "machina.conf.json not found"],
        },
        Bad {
            name: "port pattern out of range names the variable",
            case: Json(|_, m| {
                m["vars"]["seat"] = json!("70000");
                m["attrs"]["spice"] = json!({"enabled": true, "port-pattern": "${seat}"});
            }),
            file: M,
            expect: &[
                "attrs.spice.port-pattern",
                "port 70000",
                "${seat} = \"70000\"",
                "vm.conf.json: vars.seat",
            ],
        },
        Bad {
            name: "SCSI serial over 36 characters",
            case: Json(|_, m| {
                m["volumes"][0]["serial"] = json!("0123456789012345678901234567890123456");
            }),
            file: M,
            expect: &["volumes[0].serial", "at most 36"],
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
        Case::NoHost => {
            std::fs::write(dir.join("machine.conf.d/vm.conf.json"), m.to_string()).unwrap();
            return;
        }
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
            &["check", "vm"][..],
        ] {
            let out = Command::new(common::bin("machina"))
                .arg("--config-dir")
                .arg(&dir.0)
                .args(cmd)
                .output()
                .unwrap();
            // `check` prints its problems on stdout and a count on stderr.
            let err = if cmd[0] == "check" {
                String::from_utf8_lossy(&out.stdout)
            } else {
                String::from_utf8_lossy(&out.stderr)
            };
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

/// Runs `machina --config-dir DIR ARGS…`: (exit code, stdout, stderr).
fn machina(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::bin("machina"))
        .arg("--config-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Writes a host and machine files from JSON values.
fn write_config(dir: &Path, host: &Value, machines: &[(&str, &Value)]) {
    std::fs::create_dir_all(dir.join("machine.conf.d")).unwrap();
    std::fs::write(
        dir.join("machina.conf.json"),
        serde_json::to_string_pretty(host).unwrap(),
    )
    .unwrap();
    for (name, m) in machines {
        std::fs::write(
            dir.join(format!("machine.conf.d/{name}.conf.json")),
            serde_json::to_string_pretty(m).unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn every_problem_of_a_run_is_reported() {
    let dir = TempDir::new("bad-many");
    let mut m = base_machine();
    m.as_object_mut().unwrap().remove("id");
    m["tags"] = json!(["small", "big"]);
    m["attrs"]["cpu"] = json!({"cores": 2});
    m["attrs"]["agent"] = json!({"qemu": {"enabled": true, "port": 80}});
    m["attrs"]["spice"] = json!({"enabled": true, "port-pattern": "${seat}"});
    m["volumes"] = json!([{"name": "os", "storage": "data"}, {"name": "os", "storage": "nope"}]);
    m["connections"] = json!([{"name": "0", "network": "wan"}]);
    let mut other = base_machine();
    other["id"] = json!("11111111-2222-4333-8444-666666666666");
    other["tags"] = json!(["huge"]);
    other["attrs"]["memory"] = json!({"ram": 256});
    write_config(&dir.0, &base_host(), &[("vm", &m), ("other", &other)]);
    // Positions depend on the layout; the JSON test checks them.
    let want = [
        ": tags[1]: tag \"big\" is not defined",
        "vm.conf.json: id: no machine id",
        ": attrs.agent.qemu.port: port 80 is outside 1024–65535",
        "attrs.spice.port-pattern: port 7 (pattern \"${seat}\"; ${seat} = \"7\"",
        "volumes[1].name: volume \"os\" is already defined at volumes[0]",
        "connections[0].network: network \"wan\" is not defined",
        ": tags[0]: tag \"huge\" is not defined",
    ];
    let plan_dir = dir.0.join("plans");
    for cmd in [
        &["args", "vm", "other"][..],
        &["gen", "--root", dir.0.to_str().unwrap(), "vm", "other"][..],
        &["check"][..],
    ] {
        let (code, out, err) = machina(&dir.0, cmd);
        let text = if cmd[0] == "check" { &out } else { &err };
        assert_eq!(code, 1, "{cmd:?}: {err}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{cmd:?}: one line per problem:\n{text}");
        for w in want {
            assert!(text.contains(w), "{cmd:?}: missing {w:?} in\n{text}");
        }
        let positioned = lines
            .iter()
            .filter(|l| l.contains(".conf.json:") && !l.contains(": id: "))
            .count();
        assert_eq!(positioned, 6, "line:column where known:\n{text}");
        assert!(!text.contains("panicked"));
    }
    assert!(!plan_dir.exists() && !dir.0.join("etc").exists());
    let (_, _, err) = machina(&dir.0, &["check"]);
    assert!(err.contains("check: 2 machines, 7 problems"), "{err}");
}

#[test]
fn problems_are_capped() {
    let dir = TempDir::new("bad-cap");
    let mut m = base_machine();
    m["volumes"] = json!((0..80)
        .map(|_| json!({"name": "os", "storage": "data"}))
        .collect::<Vec<_>>());
    write_config(&dir.0, &base_host(), &[("vm", &m)]);
    let (code, _, err) = machina(&dir.0, &["args", "vm"]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 51, "{err}");
    assert!(lines[50].contains("and 29 more problems"), "{}", lines[50]);
    let (code, out, _) = machina(&dir.0, &["check", "--json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 79, "check lists them all");
}

#[test]
fn check_reports_as_json_with_positions() {
    let dir = TempDir::new("check-json");
    let mut m = base_machine();
    m["connections"][0]["network"] = json!("wan");
    write_config(&dir.0, &base_host(), &[("vm", &m), ("ok", &base_machine())]);
    let (code, out, err) = machina(&dir.0, &["check", "--json"]);
    assert_eq!(code, 1, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 1, "{out}");
    let p = &list[0];
    assert_eq!(p["machine"], "vm");
    assert!(p["file"]
        .as_str()
        .unwrap()
        .ends_with("machine.conf.d/vm.conf.json"));
    assert_eq!(p["path"], "connections[0].network");
    // The pretty-printed file: the value of "network" is on line 7.
    let text = std::fs::read_to_string(dir.0.join("machine.conf.d/vm.conf.json")).unwrap();
    let line = text.lines().position(|l| l.contains("\"wan\"")).unwrap() + 1;
    assert_eq!(p["line"], line, "{out}");
    let col = text.lines().nth(line - 1).unwrap().find("\"wan\"").unwrap() + 1;
    assert_eq!(p["column"], col);
    assert!(p["message"]
        .as_str()
        .unwrap()
        .contains("network \"wan\" is not defined"));
    assert_eq!(
        p["text"].as_str().unwrap(),
        format!(
            "{}:{line}:{col}: connections[0].network: {}",
            p["file"].as_str().unwrap(),
            p["message"].as_str().unwrap()
        )
    );
    // Only the good machine: exit 0, no output, nothing written.
    let (code, out, err) = machina(&dir.0, &["check", "ok"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains("check: 1 machine, no problems"), "{err}");
    let (code, out, _) = machina(&dir.0, &["check", "--json", "ok"]);
    assert_eq!((code, out.trim()), (0, "[]"));
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "check wrote nothing: {names:?}");
}

#[test]
fn check_runs_what_gen_runs() {
    // A TPM without a state directory (attrs.tpm.data) builds for `args`
    // but `gen` refuses it; so does check.
    let dir = TempDir::new("check-gen");
    let mut m = base_machine();
    m["attrs"]["tpm"] = json!({"enabled": true});
    let mut m2 = m.clone();
    m2["id"] = json!("11111111-2222-4333-8444-777777777777");
    m2["attrs"] = json!({"qmp": {"enabled": true}});
    m2["privileges"] = json!({"filesystem": {"group": {"id": 108}}});
    write_config(&dir.0, &base_host(), &[("vm", &m), ("vm2", &m2)]);
    assert_eq!(machina(&dir.0, &["args", "vm"]).0, 0);
    // gen reports both machines' refusals, writing nothing.
    let (code, _, err) = machina(
        &dir.0,
        &["gen", "--root", dir.0.to_str().unwrap(), "vm", "vm2"],
    );
    assert_eq!(code, 1);
    let refusals: Vec<&str> = err.lines().filter(|l| !l.contains("warning")).collect();
    assert_eq!(refusals.len(), 2, "{err}");
    assert!(
        refusals[0].contains("vm.conf.json: attrs.tpm.data: a TPM needs a state directory"),
        "{err}"
    );
    assert!(
        refusals[1].contains("vm2.conf.json: privileges.filesystem.group.id: group id 108"),
        "{err}"
    );
    assert!(!dir.0.join("etc").exists());
    let (code, out, _) = machina(&dir.0, &["check"]);
    assert_eq!(code, 1);
    assert!(
        out.contains(": attrs.tpm.data: a TPM needs a state directory"),
        "{out}"
    );
}

#[test]
fn missing_directory_and_badly_named_files() {
    let dir = TempDir::new("bad-dir");
    let missing = dir.0.join("nope");
    for cmd in [
        &["args", "vm"][..],
        &["check"][..],
        &["list"][..],
        &["cat", "vm"][..],
    ] {
        let (code, out, err) = machina(&missing, cmd);
        assert_eq!(code, 1, "{cmd:?}");
        let text = format!("{out}{err}");
        assert!(
            text.contains(&format!(
                "configuration directory {} not found",
                missing.display()
            )),
            "{cmd:?}: {text}"
        );
    }
    write_config(
        &dir.0,
        &base_host(),
        &[("vm", &base_machine()), ("b a d", &base_machine())],
    );
    let (code, out, err) = machina(&dir.0, &["list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("vm"), "{out}");
    assert!(
        lines[1].starts_with("b a d  error: ") && lines[1].contains("not a valid machine name"),
        "{out}"
    );
    let (code, out, _) = machina(&dir.0, &["list", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["machines"].as_array().unwrap().len(), 2);
    let (code, out, _) = machina(&dir.0, &["check"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("b a d.conf.json: file name is not a valid machine name"),
        "{out}"
    );
}

/// Issue 14: configurations the Go program runs run under machina too.
#[test]
fn go_configurations_that_ran_still_run() {
    let dir = TempDir::new("go-compat");
    let mut h = base_host();
    h["storage"]["lead"] =
        json!({"path": "/srv/iso", "pattern": "/${volume}.iso", "type": "iso-ahci"});
    h["storage"]["unset"] =
        json!({"path": "/srv/vm/", "pattern": "${site}/${volume}.raw", "type": "raw"});
    let mut m = base_machine();
    m["volumes"] = json!([
        {"name": "os", "storage": "unset"},
        {"name": "media", "storage": "lead"},
        {"name": "engineering-workstation-disk", "storage": "data"},
        {"name": "9data", "storage": "blk"}
    ]);
    m["connections"] = json!([{"name": "0", "network": "lan", "mac": "52-54-00-12-34-56"}]);
    write_config(&dir.0, &h, &[("2fa-gw", &m)]);
    let (code, out, err) = machina(&dir.0, &["args", "2fa-gw"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("filename=/srv/vm/os.raw"), "{out}");
    assert!(out.contains("filename=/srv/iso/media.iso"), "{out}");
    assert!(out.contains(",mac=52:54:00:12:34:56,"), "{out}");
    // Node-names: valid ones kept, invalid ones (leading digit, > 31
    // characters) derived, stable and referenced consistently.
    let nodes: Vec<&str> = out
        .split([' ', ','])
        .filter_map(|w| w.strip_prefix("node-name="))
        .collect();
    assert!(nodes.contains(&"media"), "{nodes:?}");
    assert_eq!(nodes.len(), 7, "{nodes:?}");
    for n in &nodes {
        assert!(
            n.len() <= 31 && n.starts_with(|c: char| c.is_ascii_alphabetic()),
            "{n}"
        );
        assert!(
            out.contains(&format!("drive={n}")) || out.contains(&format!("file={n}")),
            "{n} is used"
        );
    }
    let (_, again, _) = machina(&dir.0, &["args", "2fa-gw"]);
    assert_eq!(out, again, "stable");
    // The second example: 35 characters with a valid start.
    let mut ew = base_machine();
    ew["id"] = json!("11111111-2222-4333-8444-999999999999");
    write_config(&dir.0, &h, &[("engineering-workstation-904", &ew)]);
    let (code, out, err) = machina(&dir.0, &["args", "engineering-workstation-904"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("engineering-workstation-904-os-file"),
        "{out}"
    );
    assert!(
        out.contains("node-name=engineering-workstation-904-os,"),
        "31 characters is valid: {out}"
    );
    std::fs::remove_file(
        dir.0
            .join("machine.conf.d/engineering-workstation-904.conf.json"),
    )
    .unwrap();
    // Leaving the pool is still refused.
    h["storage"]["dots"] =
        json!({"path": "/srv/vm", "pattern": "/../${volume}.raw", "type": "raw"});
    m["volumes"] = json!([{"name": "os", "storage": "dots"}]);
    write_config(&dir.0, &h, &[("2fa-gw", &m)]);
    let (code, _, err) = machina(&dir.0, &["args", "2fa-gw"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not inside the pool directory /srv/vm"),
        "{err}"
    );
}

/// Issue 14: a system group id works for args, cat and check (as a
/// reported problem) and is refused by gen with the reason and the fix.
#[test]
fn system_group_id_is_refused_only_where_it_is_used() {
    let dir = TempDir::new("go-gid");
    let mut m = base_machine();
    m["privileges"] = json!({"filesystem": {"group": {"id": 108}}});
    write_config(&dir.0, &base_host(), &[("vm", &m)]);
    let why = "privileges.filesystem.group.id: group id 108 is a system id";
    let (code, out, err) = machina(&dir.0, &["args", "vm"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("-uuid "));
    assert!(
        err.starts_with("machina: warning: ") && err.contains(why),
        "{err}"
    );
    assert!(err.contains("remove the key"), "{err}");
    let (code, out, err) = machina(&dir.0, &["cat", "vm"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("File System Access Group: machina-vm:108"),
        "{out}"
    );
    assert!(err.contains(why));
    let (code, out, _) = machina(&dir.0, &["check"]);
    assert_eq!(code, 1);
    assert!(out.contains(why), "{out}");
    let (code, _, err) = machina(&dir.0, &["gen", "--root", dir.0.to_str().unwrap(), "vm"]);
    assert_eq!(code, 1);
    assert!(err.contains(why) && err.lines().count() == 1, "{err}");
    assert!(!dir.0.join("etc").exists());
}

/// Issue 8 item 6: across tags the first definition of a name wins (the Go
/// rule), and `cat` says which tag each entry came from.
#[test]
fn first_definition_wins_across_tags_and_cat_names_the_tag() {
    let dir = TempDir::new("tag-merge");
    let mut h = base_host();
    h["tag"]["small"]["volumes"] =
        json!([{"name": "os", "storage": "blk"}, {"name": "extra", "storage": "data"}]);
    h["tag"]["small"]["connections"] = json!([{"name": "1", "network": "lan"}]);
    write_config(&dir.0, &h, &[("vm", &base_machine())]);
    let (code, out, err) = machina(&dir.0, &["cat", "vm"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("    os: data (wwn: "),
        "the machine's os wins: {out}"
    );
    assert!(!out.contains("os: blk"), "{out}");
    assert!(
        out.contains("    extra: data (") && out.contains(", from tag small)"),
        "{out}"
    );
    assert!(out.contains("    1: lan (ip: , mac: "), "{out}");
    let (_, out, _) = machina(&dir.0, &["cat", "--json", "vm"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["volumes"][0].get("from-tag"), None);
    assert_eq!(v[0]["volumes"][1]["from-tag"], "small");
    assert_eq!(v[0]["connections"][1]["from-tag"], "small");
}

/// `check` needs no root: run as nobody (when the test runs as root), it
/// reads the configuration and answers; nothing else is needed.
#[test]
fn check_works_without_root() {
    use std::os::unix::fs::PermissionsExt;
    if !common::is_root() {
        // Already unprivileged: the other check tests cover it.
        let dir = TempDir::new("check-user");
        write_config(&dir.0, &base_host(), &[("vm", &base_machine())]);
        assert_eq!(machina(&dir.0, &["check"]).0, 0);
        return;
    }
    let dir = TempDir::new("check-nobody");
    write_config(&dir.0, &base_host(), &[("vm", &base_machine())]);
    let mut bad = base_machine();
    bad["connections"][0]["network"] = json!("wan");
    write_config(&dir.0, &base_host(), &[("bad", &bad)]);
    for p in [&dir.0, &dir.0.join("machine.conf.d")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let bin = common::bin("machina");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("--config-dir")
        .arg(&dir.0)
        .args(["check", "--json"])
        .output();
    let Ok(out) = out else {
        return common::skip("check_works_without_root", "setpriv is not installed");
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["machine"], "bad");
    assert!(err.contains("check: 2 machines, 1 problem"), "{err}");
}
