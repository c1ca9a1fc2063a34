//! Building a launch plan from a built machine and its QEMU hardware, and
//! choosing the VM's uid/gid.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{Access, Grant, Mdev, Plan, QemuExec, Tap, PLAN_VERSION};
use crate::config::model::{FsGroup, Machine, ResolvedVolume};
use crate::config::schema::StorageType;
use crate::identity::{derive_vm_id, vm_id_candidates};
use crate::names::MachineName;
use crate::qemu::Hardware;

/// Builds the plan for `m`, whose QEMU hardware is `hw`, running as `id`.
/// The hardware's options become the plan's argv (moved, not copied).
pub fn plan_for(m: &Machine, hw: Hardware, id: u32, sysfs_root: &Path) -> Plan {
    let mut grants: Vec<Grant> = Vec::new();
    let mut push = |v: &ResolvedVolume| {
        if let Some(g) = grant_for(v) {
            // Volume paths are clean (no `.`, `..`, `//` or trailing `/`):
            // equal as bytes exactly when equal as paths, and much cheaper
            // to compare than component by component.
            if !grants
                .iter()
                .any(|x| x.path.as_os_str() == g.path.as_os_str())
            {
                grants.push(g);
            }
        }
    };
    if let Some(fw) = &m.firmware {
        push(&fw.code);
        if let Some(v) = &fw.vars {
            push(v);
        }
    }
    m.volumes.iter().for_each(&mut push);

    let Hardware {
        options,
        taps,
        needs,
    } = hw;
    let taps = m
        .connections
        .iter()
        .zip(taps)
        .map(|(c, fds)| Tap {
            ifname: c.ifname.clone(),
            bridge: c.bridge.clone(),
            mac: c.mac.clone(),
            fds: fds.fds,
            vhost_fds: fds.vhost_fds,
        })
        .collect();
    let mdevs: Vec<Mdev> = m
        .devices
        .iter()
        .map(|d| Mdev {
            uuid: d.uuid,
            sysfs_root: sysfs_root.to_owned(),
            parents: d.parents.clone(),
        })
        .collect();
    Plan {
        version: PLAN_VERSION,
        machine: m.name.clone(),
        uuid: m.id,
        uid: id,
        gid: id,
        taps,
        mdevs,
        grants,
        network_isolation: !needs.inet(),
        needs,
        limits: m.limits.clone(),
        console_log: m.console.is_some(),
        qemu: QemuExec {
            binary: m.qemu.binary.clone(),
            args: crate::qemu::into_argv(options),
        },
        tpm: m.tpm.as_ref().and_then(|t| {
            Some(super::Swtpm {
                data_dir: t.data.clone()?,
                socket: t.socket.clone(),
                swtpm: "/usr/bin/swtpm".into(),
                swtpm_setup: "/usr/bin/swtpm_setup".into(),
                swtpm_localca: "/usr/bin/swtpm_localca".into(),
            })
        }),
    }
}

/// What a VM needs of a volume's file.
fn grant_for(v: &ResolvedVolume) -> Option<Grant> {
    let (access, shared) = match v.kind {
        StorageType::Raw | StorageType::RawScsi | StorageType::RawBlock | StorageType::Firmware => {
            if v.readonly {
                (Access::ReadOnly, true)
            } else {
                (Access::ReadWrite, false)
            }
        }
        StorageType::VvfatBlock
        | StorageType::IsoAhci
        | StorageType::IsoScsi
        | StorageType::IsoUsb => (Access::ReadOnly, true),
        StorageType::TpmData => return None,
    };
    Some(Grant {
        path: v.path.clone(),
        access,
        shared,
    })
}

/// Why no id could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    /// Every round collided.
    #[error("no free uid/gid for {machine} in {first}–{last}: every candidate is taken; widen \"id-range\" in the host file or set privileges.filesystem.group.id")]
    Exhausted {
        /// The machine.
        machine: String,
        /// Range start.
        first: u32,
        /// Range end.
        last: u32,
    },
    /// The configured id is a system or special id (the message says why
    /// and what to do).
    #[error("{0}")]
    Refused(String),
}

/// Ids already in use on the target host: users and groups, and other VMs'
/// plans. Everything is read once, when the run starts, so choosing the ids
/// of 10,000 VMs costs no host lookups per VM.
#[derive(Debug, Default)]
pub struct TakenIds {
    /// Uids and gids of users and groups.
    ids: HashSet<u32>,
    /// Ask the system's user and group databases about each *new* candidate
    /// as well: only when generating for this host and `nsswitch.conf` names
    /// a source that may not enumerate (LDAP, sssd, …).
    point_check: bool,
    /// Plans found, by machine name: (uuid, uid).
    plans: HashMap<String, (uuid::Uuid, u32)>,
    /// How many plans hold each uid (so "taken by another VM" is one lookup).
    plan_uids: HashMap<u32, u32>,
}

/// `nsswitch.conf` sources whose every entry `getpwent`/`getgrent` lists.
const ENUMERABLE_SOURCES: [&str; 3] = ["files", "compat", "systemd"];

impl TakenIds {
    /// Reads the account databases of the target host and the plans in
    /// `plan_dir`. For this host (`etc` is `/etc`) the users and groups are
    /// enumerated through NSS once (`getpwent`/`getgrent`, which also lists
    /// systemd's userdb); for another root, `<etc>/passwd` and `<etc>/group`
    /// are read. Missing files are fine (an empty target tree).
    pub fn scan(etc: &Path, plan_dir: &Path) -> TakenIds {
        let mut t = TakenIds::default();
        if etc == Path::new("/etc") {
            t.ids = nss_enumerate();
            t.point_check = !nss_enumerates_all(
                &std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default(),
            );
        } else {
            for db in ["passwd", "group"] {
                if let Ok(text) = std::fs::read_to_string(etc.join(db)) {
                    t.ids.extend(account_ids(&text));
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(plan_dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json") {
                    if let Ok(plan) = std::fs::read_to_string(&p)
                        .map_err(|_| ())
                        .and_then(|s| Plan::from_json(&s).map_err(|_| ()))
                    {
                        t.insert_plan(plan.machine.to_string(), plan.uuid, plan.uid);
                    }
                }
            }
        }
        t
    }

    /// Makes room for `n` more VMs (before [`TakenIds::take`] is called for
    /// each of thousands).
    pub fn reserve(&mut self, n: usize) {
        self.plans.reserve(n);
        self.plan_uids.reserve(n);
    }

    fn insert_plan(&mut self, name: String, uuid: uuid::Uuid, uid: u32) {
        if let Some((_, old)) = self.plans.insert(name, (uuid, uid)) {
            if let Some(n) = self.plan_uids.get_mut(&old) {
                *n -= 1;
            }
        }
        *self.plan_uids.entry(uid).or_default() += 1;
    }

    /// The VM's id: the configured one; else the one its existing plan has
    /// (a VM keeps its id across `gen`); else the first derived candidate
    /// that no other VM, user or group has.
    pub fn id_for(&self, m: &Machine) -> Result<u32, IdError> {
        self.id_of(&IdRequest::of(m))
    }

    /// [`TakenIds::id_for`] from what it needs of a machine.
    pub fn id_of(&self, r: &IdRequest) -> Result<u32, IdError> {
        if let Some((origin, why)) = &r.group.refused {
            return Err(IdError::Refused(format!("{origin}: {why}")));
        }
        if let Some(id) = r.group.id {
            return Ok(id);
        }
        let own = self.plans.get(r.name.as_str());
        if let Some((uuid, uid)) = own {
            if *uuid == r.uuid && r.group.range.contains(*uid) {
                return Ok(*uid);
            }
        }
        let own_uid = own.map(|(_, uid)| *uid);
        let other_vm = |c: u32| {
            let n = self.plan_uids.get(&c).copied().unwrap_or(0);
            n > u32::from(own_uid == Some(c))
        };
        let nss_taken = |id: u32| {
            use nix::unistd::{Gid, Group, Uid, User};
            self.point_check
                && (matches!(User::from_uid(Uid::from_raw(id)), Ok(Some(_)))
                    || matches!(Group::from_gid(Gid::from_raw(id)), Ok(Some(_))))
        };
        let taken = |&c: &u32| self.ids.contains(&c) || other_vm(c) || nss_taken(c);
        let rest = vm_id_candidates(&r.uuid, r.name.as_str(), r.group.range, 1);
        match r.first_candidate {
            Some(first) => std::iter::once(first).chain(rest).find(|c| !taken(c)),
            None => derive_vm_id(&r.uuid, r.name.as_str(), r.group.range, taken),
        }
        .ok_or_else(|| IdError::Exhausted {
            machine: r.name.to_string(),
            first: r.group.range.first,
            last: r.group.range.last,
        })
    }

    /// Records an id as taken (when generating several VMs in one run).
    pub fn take(&mut self, r: &IdRequest, id: u32) {
        self.insert_plan(r.name.to_string(), r.uuid, id);
    }
}

/// What choosing a VM's id needs of its machine (kept instead of the whole
/// machine while thousands are generated).
#[derive(Debug, Clone)]
pub struct IdRequest {
    /// The machine's name.
    pub name: MachineName,
    /// Its UUID.
    pub uuid: uuid::Uuid,
    /// Its configured group.
    pub group: FsGroup,
    /// The first derived candidate, when the id is derived: `gen` asks for
    /// a VM's id twice (while building, then in order), and the hash is
    /// most of the cost of asking.
    first_candidate: Option<u32>,
}

impl IdRequest {
    /// The request for `m`.
    pub fn of(m: &Machine) -> IdRequest {
        let derived = m.group.id.is_none() && m.group.refused.is_none();
        IdRequest {
            name: m.name.clone(),
            uuid: m.id,
            group: m.group.clone(),
            first_candidate: derived
                .then(|| vm_id_candidates(&m.id, m.name.as_str(), m.group.range, 0).next())
                .flatten(),
        }
    }
}

/// The third field of each `name:x:id:…` line of a passwd or group file.
fn account_ids(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.lines()
        .filter_map(|line| line.split(':').nth(2).and_then(|f| f.parse().ok()))
}

/// Whether every source `nsswitch.conf` lists for `passwd` and `group` is
/// one whose entries enumeration returns in full (a missing file or line
/// means `files`, glibc's default).
fn nss_enumerates_all(nsswitch: &str) -> bool {
    nsswitch
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| l.split_once(':'))
        .filter(|(db, _)| matches!(db.trim(), "passwd" | "group"))
        .all(|(_, sources)| {
            sources
                .split_whitespace()
                // `[NOTFOUND=return]`-style actions are not sources.
                .filter(|s| !s.starts_with('['))
                .all(|s| ENUMERABLE_SOURCES.contains(&s))
        })
}

/// Every uid and gid the system's user and group databases enumerate.
fn nss_enumerate() -> HashSet<u32> {
    let mut ids = HashSet::new();
    // SAFETY: getpwent/getgrent iterate libc's process-wide cursor and
    // return entries valid until the next call: machina's commands call
    // this from their main thread before starting any thread of their own
    // (nothing else in the process walks the databases concurrently), and
    // only the id field is read, before the next call.
    unsafe {
        libc::setpwent();
        loop {
            let p = libc::getpwent();
            if p.is_null() {
                break;
            }
            ids.insert((*p).pw_uid);
        }
        libc::endpwent();
        libc::setgrent();
        loop {
            let g = libc::getgrent();
            if g.is_null() {
                break;
            }
            ids.insert((*g).gr_gid);
        }
        libc::endgrent();
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsswitch_sources() {
        assert!(nss_enumerates_all(
            "passwd: files systemd\ngroup: files systemd\n"
        ));
        assert!(nss_enumerates_all(""));
        assert!(nss_enumerates_all("hosts: files dns\n# passwd: ldap\n"));
        assert!(!nss_enumerates_all("passwd: files sss\ngroup: files\n"));
        assert!(!nss_enumerates_all(
            "passwd: files\ngroup: files [NOTFOUND=return] ldap\n"
        ));
        assert!(nss_enumerates_all(
            "passwd: files [SUCCESS=merge] systemd\n"
        ));
    }

    #[test]
    fn account_lines() {
        let ids: Vec<u32> = account_ids("root:x:0:0::/root:/bin/sh\nbad\nkvm:x:104:\n").collect();
        assert_eq!(ids, [0, 104]);
    }

    #[test]
    fn this_host_has_root() {
        assert!(nss_enumerate().contains(&0));
    }
}
