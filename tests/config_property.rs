//! Property test: arbitrary and mutated JSON fed to the whole config →
//! hardware → plan pipeline never panics; it either builds or returns an
//! error. Deterministic (fixed seeds), so a failure reproduces. The
//! coverage-guided fuzz target for the same pipeline is fuzz/fuzz_targets/config.rs.

use std::path::Path;

use machina::config::{self, Host, HostFile, MachineFile};
use machina::names::MachineName;
use serde_json::{json, Map, Value};

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const KEYS: &[&str] = &[
    "name",
    "id",
    "tags",
    "vars",
    "attrs",
    "volumes",
    "connections",
    "devices",
    "storage",
    "network",
    "tag",
    "mediated-device",
    "mdev",
    "processor",
    "qemu",
    "memory",
    "ram",
    "cpu",
    "sockets",
    "cores",
    "threads",
    "spice",
    "agent",
    "qmp",
    "enabled",
    "port",
    "port-pattern",
    "displays",
    "firmware",
    "code",
    "path",
    "type",
    "pattern",
    "readonly",
    "wwn",
    "serial",
    "bootable",
    "mac",
    "queues",
    "class",
    "classes",
    "address",
    "types",
    "device",
    "sockets",
    "names",
    "paths",
    "tpm",
    "data",
    "socket",
    "privileges",
    "filesystem",
    "group",
    "accelerator",
    "binary",
    "cpu-model",
    "vhost",
    "id-range",
    "first",
    "last",
    "placements",
    "heterogeneous",
];
const STRINGS: &[&str] = &[
    "",
    "os",
    "raw",
    "raw-block",
    "iso-ahci",
    "firmware",
    "tpm-data",
    "vvfat-block",
    "/srv",
    "../../etc",
    "a,b",
    "x=y",
    "${machine-name}",
    "$((1+",
    "$((65535*2))",
    "5${n}",
    "0x5000c500a1b2c3d4",
    "0X6",
    "52:54:00:00:00:01",
    "0000:c1:00.0",
    "kvm",
    "tcg",
    "host",
    "\n",
    "é",
    "lan",
    "br0",
    "small",
    "9000",
    "${",
    "$",
];

fn random_value(r: &mut Rng, depth: usize) -> Value {
    match r.below(if depth > 3 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(r.below(2) == 1),
        2 => json!([0i64, 1, -1, 80, 1024, 65535, 70000, 4294967296, i64::MAX][r.below(9)]),
        3 | 4 => json!(STRINGS[r.below(STRINGS.len())]),
        5 => json!(1.5),
        6 => Value::Array(
            (0..r.below(4))
                .map(|_| random_value(r, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..r.below(5) {
                let k = if r.below(4) == 0 {
                    STRINGS[r.below(STRINGS.len())]
                } else {
                    KEYS[r.below(KEYS.len())]
                };
                m.insert(k.to_owned(), random_value(r, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// Replaces a random node of `v` with a random value.
fn mutate(r: &mut Rng, v: &mut Value, depth: usize) {
    let children: usize = match v {
        Value::Object(m) => m.len(),
        Value::Array(a) => a.len(),
        _ => 0,
    };
    if children == 0 || r.below(4) == 0 {
        *v = random_value(r, depth);
        return;
    }
    let i = r.below(children);
    match v {
        Value::Object(m) => {
            let key = m.keys().nth(i).cloned().unwrap();
            if r.below(8) == 0 {
                let val = m.remove(&key).unwrap();
                m.insert(KEYS[r.below(KEYS.len())].to_owned(), val);
            } else {
                mutate(r, m.get_mut(&key).unwrap(), depth + 1);
            }
        }
        Value::Array(a) => mutate(r, &mut a[i], depth + 1),
        _ => unreachable!(),
    }
}

fn base() -> (Value, Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let host: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("machina.conf.json")).unwrap())
            .unwrap();
    let vm: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("machine.conf.d/test-vm.conf.json")).unwrap(),
    )
    .unwrap();
    (host, vm)
}

/// Runs the pipeline; returns whether it built.
fn pipeline(host: &str, vm: &str) -> bool {
    let Ok(h) = config::parse::<HostFile>(Path::new("h.json"), host) else {
        return false;
    };
    let Ok(m) = config::parse::<MachineFile>(Path::new("m.json"), vm) else {
        return false;
    };
    let name = MachineName::new("vm").unwrap();
    let Ok(machine) = config::build(
        &Host {
            file: &h,
            path: Path::new("h.json"),
        },
        &name,
        &m,
        Path::new("m.json"),
    ) else {
        return false;
    };
    let Ok(hw) = machina::qemu::build(&machine) else {
        return false;
    };
    let plan = machina::plan::plan_for(&machine, hw, 70000, Path::new("/sys"));
    plan.check()
        .expect("a generated plan passes its own checks");
    machina::plan::Plan::from_json(&plan.to_json()).expect("a generated plan reads back");
    // Nothing that reaches QEMU may carry a control character.
    assert!(plan
        .qemu
        .args
        .iter()
        .all(|a| !a.chars().any(char::is_control)));
    true
}

#[test]
fn mutated_configs_never_panic() {
    let (host, vm) = base();
    let mut built = 0;
    let runs: u64 = 4000;
    for seed in 1..=runs {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (mut h, mut m) = (host.clone(), vm.clone());
        for _ in 0..1 + r.below(3) {
            if r.below(2) == 0 {
                mutate(&mut r, &mut h, 0)
            } else {
                mutate(&mut r, &mut m, 0)
            }
        }
        let (hs, ms) = (h.to_string(), m.to_string());
        let ok = std::panic::catch_unwind(|| pipeline(&hs, &ms))
            .unwrap_or_else(|_| panic!("panic for seed {seed}:\nhost {hs}\nmachine {ms}"));
        built += usize::from(ok);
    }
    // Some mutations must still build, or the test only exercises errors.
    assert!(
        built > 40 && built < runs as usize,
        "{built} of {runs} built"
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    let (host, vm) = base();
    let vm = vm.to_string();
    let host = host.to_string();
    for seed in 1..=3000u64 {
        let mut r = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mut bytes = vm.clone().into_bytes();
        for _ in 0..1 + r.below(4) {
            let i = r.below(bytes.len());
            match r.below(3) {
                0 => bytes[i] = (r.next() & 0xff) as u8,
                1 => {
                    bytes.remove(i);
                }
                _ => {
                    let set = b"{}[],:\"\\0-e";
                    bytes.insert(i, set[r.below(set.len())]);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        std::panic::catch_unwind(|| pipeline(&host, &text))
            .unwrap_or_else(|_| panic!("panic for seed {seed}: {text}"));
    }
}
