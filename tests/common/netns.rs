//! Network namespaces for tests: each test gets its own, with a bridge
//! `br0` in it, removed on drop. The host's real network is never touched.

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short tag for this process and call (`<pid>-<n>`).
pub fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A network namespace created by the test; deleted on drop.
pub struct NetNs {
    /// Its name (`machina-t-…`).
    pub name: String,
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip")
}

impl NetNs {
    /// Creates a namespace with loopback up and, if `bridge`, a bridge
    /// `br0` that is up.
    pub fn new(bridge: bool) -> NetNs {
        let ns = NetNs {
            name: format!("machina-t-{}", unique()),
        };
        let out = ip(&["netns", "add", &ns.name]);
        assert!(out.status.success(), "ip netns add: {out:?}");
        ns.ip(&["link", "set", "lo", "up"]);
        if bridge {
            ns.ip(&["link", "add", "br0", "type", "bridge"]);
            ns.ip(&["link", "set", "br0", "up"]);
        }
        ns
    }

    /// Runs `ip -n <ns> args…` and asserts success.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        let out = ip(&all);
        assert!(out.status.success(), "ip {all:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command run inside the namespace (`ip netns exec`, which execs:
    /// the child's pid is the command's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Names of every interface in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| {
                let name = l.split(": ").nth(1)?;
                Some(name.split('@').next()?.to_owned())
            })
            .collect()
    }

    /// The bridge an interface is enslaved to, from `ip -d link show`.
    pub fn master_of(&self, ifname: &str) -> Option<String> {
        let out = self.ip(&["-o", "link", "show", "dev", ifname]);
        let mut words = out.split_whitespace();
        words.find(|w| *w == "master")?;
        words.next().map(str::to_owned)
    }

    /// Runs `f` on a fresh thread that has joined this namespace (a
    /// network namespace is per thread), e.g. to call teardown.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
