//! The launcher's own check of QEMU's argv: whatever the plan says, QEMU
//! runs under machina's seccomp sandbox and cannot be told to change its
//! identity, root directory or session.
//!
//! The argv is parsed the way QEMU parses it, with QEMU's own arity for
//! every option machina (or a test) uses; any other option, a positional
//! argument or a `--option` spelling is refused, so no value can be
//! mistaken for an option or the other way round. Exactly one `-sandbox`
//! is allowed, with exactly machina's value.

use crate::qemu::SANDBOX;

/// Options QEMU reads without a value.
const FLAGS: &[&str] = &[
    "S",
    "nodefaults",
    "nographic",
    "enable-kvm",
    "no-reboot",
    "no-shutdown",
    "no-user-config",
];

/// Options QEMU reads with one value.
const WITH_VALUE: &[&str] = &[
    "accel", "append", "blockdev", "boot", "chardev", "cpu", "device", "display", "drive",
    "global", "initrd", "kernel", "m", "machine", "mon", "name", "netdev", "object", "rtc",
    "sandbox", "serial", "smp", "spice", "tpmdev", "uuid", "vga",
];

/// Options named in the refusal because of what they do.
const FORBIDDEN: &[(&str, &str)] = &[
    ("runas", "QEMU runs as the VM's uid already"),
    ("run-with", "QEMU runs as the VM's uid already"),
    ("chroot", "QEMU must not change its root directory"),
    ("daemonize", "QEMU must stay the launcher's process"),
    ("readconfig", "a config file could change the sandbox"),
    ("set", "it could change the sandbox"),
    ("plugin", "it loads code"),
];

/// Checks `args` (QEMU's argv after `argv[0]`); the error is one line.
pub fn check(args: &[String]) -> Result<(), String> {
    let want = SANDBOX.join(",");
    let mut sandboxes = 0;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let Some(name) = a.strip_prefix('-') else {
            return Err(format!(
                "QEMU argument {a:?} is not an option (positional arguments are refused)"
            ));
        };
        if let Some((_, why)) = FORBIDDEN.iter().find(|(f, _)| *f == name) {
            return Err(format!("QEMU option {a} is refused: {why}"));
        }
        if FLAGS.contains(&name) {
            i += 1;
            continue;
        }
        if !WITH_VALUE.contains(&name) {
            return Err(format!(
                "QEMU option {a:?} is not one machina generates; refused"
            ));
        }
        let Some(value) = args.get(i + 1) else {
            return Err(format!("QEMU option {a} has no value"));
        };
        if name == "sandbox" {
            sandboxes += 1;
            if *value != want {
                return Err(format!(
                    "-sandbox {value} is refused: QEMU runs only with -sandbox {want}"
                ));
            }
        }
        i += 2;
    }
    match sandboxes {
        1 => Ok(()),
        0 => Err(format!(
            "QEMU's argv has no -sandbox; QEMU runs only with -sandbox {want} (run `machina gen`)"
        )),
        _ => Err("QEMU's argv has more than one -sandbox".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sandbox_is_enforced() {
        let sb = SANDBOX.join(",");
        check(&v(&["-S", "-m", "128", "-sandbox", &sb])).unwrap();
        // A value that looks like an option is a value.
        check(&v(&["-name", "-sandbox", "-sandbox", &sb])).unwrap();
        for bad in [
            v(&["-m", "128"]),
            v(&["-sandbox", "off"]),
            v(&["-sandbox", &sb, "-sandbox", "on"]),
            v(&["-sandbox", &sb, "-runas", "nobody"]),
            v(&["-sandbox", &sb, "-daemonize"]),
            v(&["-sandbox", &sb, "-chroot", "/"]),
            v(&["--sandbox", &sb]),
            v(&["-sandbox", &sb, "disk.img"]),
            v(&["-sandbox", &sb, "-hda", "x"]),
            v(&["-sandbox"]),
            // A flag QEMU would read with a value would hide the sandbox.
            v(&["-unknownflag", "-sandbox", &sb]),
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }
}
