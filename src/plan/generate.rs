//! Building a launch plan from a built machine and its QEMU hardware, and
//! choosing the VM's uid/gid.

use std::collections::HashSet;
use std::path::Path;

use super::{Access, Grant, Mdev, Plan, QemuExec, Tap, PLAN_VERSION};
use crate::config::model::{Machine, ResolvedVolume};
use crate::config::schema::StorageType;
use crate::identity::derive_vm_id;
use crate::qemu::Hardware;

/// Builds the plan for `m`, whose QEMU hardware is `hw`, running as `id`.
pub fn plan_for(m: &Machine, hw: &Hardware, id: u32, sysfs_root: &Path) -> Plan {
    let mut grants: Vec<Grant> = Vec::new();
    let mut push = |v: &ResolvedVolume| {
        if let Some(g) = grant_for(v) {
            if !grants.iter().any(|x| x.path == g.path) {
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

    let taps = m
        .connections
        .iter()
        .zip(&hw.taps)
        .map(|(c, fds)| Tap {
            ifname: c.ifname.clone(),
            bridge: c.bridge.clone(),
            mac: c.mac.clone(),
            fds: fds.fds.clone(),
            vhost_fds: fds.vhost_fds.clone(),
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
        needs: hw.needs.clone(),
        limits: m.limits.clone(),
        qemu: QemuExec {
            binary: m.qemu.binary.clone(),
            args: hw.argv(),
        },
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

/// Ids already in use on the target host: users and groups in
/// `<root>/etc/passwd` and `<root>/etc/group`, and other VMs' plans.
#[derive(Debug, Default)]
pub struct TakenIds {
    ids: HashSet<u32>,
    /// Also ask the system's user and group databases (NSS: LDAP, sssd, …)
    /// — only when generating for this host.
    nss: bool,
    /// Plans found, by machine name: (uuid, uid).
    plans: std::collections::HashMap<String, (uuid::Uuid, u32)>,
}

impl TakenIds {
    /// Reads the account databases under `etc` and the plans in `plan_dir`.
    /// Missing files are fine (an empty target tree).
    pub fn scan(etc: &Path, plan_dir: &Path) -> TakenIds {
        let mut t = TakenIds {
            nss: etc == Path::new("/etc"),
            ..TakenIds::default()
        };
        for db in ["passwd", "group"] {
            if let Ok(text) = std::fs::read_to_string(etc.join(db)) {
                for line in text.lines() {
                    if let Some(id) = line.split(':').nth(2).and_then(|f| f.parse().ok()) {
                        t.ids.insert(id);
                    }
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
                        t.plans
                            .insert(plan.machine.to_string(), (plan.uuid, plan.uid));
                    }
                }
            }
        }
        t
    }

    /// The VM's id: the configured one; else the one its existing plan has
    /// (a VM keeps its id across `gen`); else the first derived candidate
    /// that no other VM, user or group has.
    pub fn id_for(&self, m: &Machine) -> Result<u32, IdError> {
        if let Some((origin, why)) = &m.group.refused {
            return Err(IdError::Refused(format!("{origin}: {why}")));
        }
        if let Some(id) = m.group.id {
            return Ok(id);
        }
        if let Some((uuid, uid)) = self.plans.get(m.name.as_str()) {
            if *uuid == m.id && m.group.range.contains(*uid) {
                return Ok(*uid);
            }
        }
        let others: HashSet<u32> = self
            .plans
            .iter()
            .filter(|(name, _)| name.as_str() != m.name.as_str())
            .map(|(_, (_, uid))| *uid)
            .collect();
        let nss_taken = |id: u32| {
            use nix::unistd::{Gid, Group, Uid, User};
            self.nss
                && (matches!(User::from_uid(Uid::from_raw(id)), Ok(Some(_)))
                    || matches!(Group::from_gid(Gid::from_raw(id)), Ok(Some(_))))
        };
        derive_vm_id(&m.id, m.name.as_str(), m.group.range, |c| {
            self.ids.contains(&c) || others.contains(&c) || nss_taken(c)
        })
        .ok_or_else(|| IdError::Exhausted {
            machine: m.name.to_string(),
            first: m.group.range.first,
            last: m.group.range.last,
        })
    }

    /// Records an id as taken (when generating several VMs in one run).
    pub fn take(&mut self, m: &Machine, id: u32) {
        self.plans.insert(m.name.to_string(), (m.id, id));
    }
}
