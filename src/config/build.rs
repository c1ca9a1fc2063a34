//! Tag merge (reference §2.11), population of derived identities (§7) and
//! resolution against the host file, with every check the Go program lacked.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

use uuid::Uuid;

use super::error::{ConfigError, Origin, Problems};
use super::model::*;
use super::pattern::{expand, port_from_pattern};
use super::schema::{
    Attributes, Connection, Definition, Device, HostFile, MachineFile, StorageType, Volume,
};
use crate::identity::{self, IdRange, Wwn};
use crate::names::{InterfaceName, MachineName, TagName};
use crate::paths::RUNTIME_ROOT;

/// Lowest TCP port a VM may use: QEMU never runs as root.
pub const MIN_PORT: i64 = 1024;

/// The host file with its path, for error messages.
pub struct Host<'a> {
    /// The parsed file.
    pub file: &'a HostFile,
    /// Its path.
    pub path: &'a Path,
}

/// One definition in merge order, with where it came from.
struct Def<'a> {
    def: &'a Definition,
    origin: Origin,
}

/// Builds a machine: merges its tags, fills in derived identities and
/// resolves pools, networks, devices and ports against the host file.
pub fn build(
    host: &Host<'_>,
    name: &MachineName,
    file: &MachineFile,
    machine_path: &Path,
) -> Result<Machine, ConfigError> {
    // Every independent check runs, so one run reports every problem.
    let mut p = Problems::default();
    let morigin = Origin::new(machine_path, "");
    if let Some(json_name) = &file.name {
        if json_name != name.as_str() {
            p.push(ConfigError::invalid(
                &morigin.key("name"),
                format!("name {json_name:?} differs from the file name {:?}; rename the file or remove the key", name.as_str()),
            ));
        }
    }
    let own = file.definition();
    let mut defs = vec![Def {
        def: &own,
        origin: morigin.clone(),
    }];
    let horigin = Origin::new(host.path, "tag");
    for (i, tag) in file.tags.iter().enumerate() {
        match host.file.tag.get(tag) {
            Some(def) => defs.push(Def {
                def,
                origin: horigin.key(tag.as_str()),
            }),
            None => p.push(ConfigError::invalid(
                &morigin.key("tags").index(i),
                format!(
                    "tag {:?} is not defined in the host file {}{}",
                    tag.as_str(),
                    host.path.display(),
                    suggest_tag(host.file, tag)
                ),
            )),
        }
    }

    let id = match file.id {
        Some(id) if !id.is_nil() => id,
        Some(_) => {
            p.push(ConfigError::invalid(
                &morigin.key("id"),
                "the nil UUID is not a machine id (every such VM would share one SMBIOS UUID); set a UUID of its own, e.g. from `machina gen-id`",
            ));
            Uuid::nil()
        }
        None => {
            p.push(ConfigError::invalid(
                &morigin.key("id"),
                "no machine id: without one the VM gets the nil UUID, shared by every such VM as SMBIOS UUID and seed of its MACs, serials and WWNs; add \"id\": \"<uuid>\" (`machina gen-id` prints a new one)",
            ));
            Uuid::nil()
        }
    };
    let vars = merge_vars(&defs);
    let attrs = merge_attrs(&defs);
    let qemu = p.take(resolve_qemu(host));
    let group = p.take(resolve_group(host, name, &defs));

    let description = file.description.clone();
    p.take(check_text(|| morigin.key("description"), &description));

    let ctx = Ctx {
        host,
        name,
        id,
        id_str: id.to_string(),
        description: &description,
        vars: &vars,
        defs: &defs,
    };

    let ram_mib = attrs.memory.ram;
    // A missing tag may be what would have set the RAM: its line says so.
    if ram_mib == 0 && defs.len() == file.tags.len() + 1 {
        p.push(ConfigError::invalid(
            &morigin.key("attrs.memory.ram"),
            "no RAM is set (attrs.memory.ram, in MiB, in the machine or one of its tags)",
        ));
    }
    if ram_mib > 16 << 20 {
        p.push(ConfigError::invalid(
            &field_origin(&defs, "attrs.memory.ram", |d| d.attrs.memory.ram > 0),
            format!("RAM of {ram_mib} MiB is more than 16 TiB"),
        ));
    }

    let cpu = p.take(resolve_cpu(&ctx, &defs, &attrs));
    let limits = p.take(resolve_limits(&defs, &attrs, ram_mib));
    let firmware = p.take(resolve_firmware(&ctx, &defs, &attrs));
    let tpm = p.take(resolve_tpm(&ctx, &defs, &attrs));
    let qmp_sockets = p.take(resolve_qmp(&ctx, &defs, &attrs));
    let agent_port = if attrs.agent.qemu.enabled {
        p.take(
            resolve_port(
                &ctx,
                &defs,
                "attrs.agent.qemu",
                attrs.agent.qemu.port,
                &attrs.agent.qemu.port_pattern,
                |d| {
                    (
                        d.attrs.agent.qemu.port,
                        d.attrs.agent.qemu.port_pattern.as_str(),
                    )
                },
            )
            .map(Some),
        )
    } else {
        Some(None)
    };
    let spice = if attrs.spice.enabled {
        p.take(
            resolve_port(
                &ctx,
                &defs,
                "attrs.spice",
                attrs.spice.port,
                &attrs.spice.port_pattern,
                |d| (d.attrs.spice.port, d.attrs.spice.port_pattern.as_str()),
            )
            .map(|port| {
                Some(SpiceSpec {
                    port,
                    heads: attrs.spice.displays.clamp(1, 4),
                })
            }),
        )
    } else {
        Some(None)
    };

    let mut volumes = Vec::new();
    for (v, origin) in merge_named(
        &mut p,
        &defs,
        "volumes",
        "volume",
        |d| &d.volumes,
        |v: &Volume| v.name.as_ref().map(|n| n.to_string()),
    ) {
        volumes.extend(p.take(resolve_volume(&ctx, v, &origin, true)));
    }
    let mut connections = Vec::new();
    for (c, origin) in merge_named(
        &mut p,
        &defs,
        "connections",
        "connection",
        |d| &d.connections,
        |c: &Connection| c.name.as_ref().map(|n| n.to_string()),
    ) {
        connections.extend(p.take(resolve_connection(&ctx, c, &origin)));
    }
    let mut ifnames = HashSet::new();
    for c in &connections {
        if !ifnames.insert(c.ifname.clone()) {
            p.push(ConfigError::invalid(
                &c.origin,
                format!("interface name {} is used by two connections", c.ifname),
            ));
        }
    }
    let mut devices = Vec::new();
    for (d, origin) in merge_named(
        &mut p,
        &defs,
        "devices",
        "device",
        |d| &d.devices,
        |d: &Device| d.name.as_ref().map(|n| n.to_string()),
    ) {
        devices.extend(p.take(resolve_device(&ctx, d, &origin)));
    }

    if let Some(e) = p.into_error() {
        return Err(e);
    }
    let (
        Some(qemu),
        Some(group),
        Some(cpu),
        Some(firmware),
        Some(tpm),
        Some(qmp_sockets),
        Some(agent_port),
        Some(spice),
        Some(limits),
    ) = (
        qemu,
        group,
        cpu,
        firmware,
        tpm,
        qmp_sockets,
        agent_port,
        spice,
        limits,
    )
    else {
        unreachable!("every part missing recorded a problem");
    };
    let console = attrs
        .console
        .enabled
        .then(|| ConsoleSpec::for_machine(name));
    Ok(Machine {
        name: name.clone(),
        description,
        id,
        tags: file.tags.clone(),
        vars,
        group,
        attrs,
        qemu,
        firmware,
        cpu,
        ram_mib,
        enlightenments: defs.iter().any(|d| d.def.attrs.enlightenments.enabled),
        tpm,
        qmp_sockets,
        agent_port,
        spice,
        limits,
        console,
        volumes,
        connections,
        devices,
        origin: morigin,
    })
}

/// Default `attrs.limits.memory.margin`: QEMU's own memory beyond the
/// guest's RAM (device models, block caches, the TCG code buffer).
const MEMORY_MARGIN_MIB: u64 = 512;

fn resolve_limits(
    defs: &[Def<'_>],
    attrs: &Attributes,
    ram_mib: u64,
) -> Result<ResourceLimits, ConfigError> {
    let l = &attrs.limits;
    let mut p = Problems::default();
    let weight = match l.cpu.weight {
        0 => None,
        w @ 1..=10000 => Some(w as u32),
        w => {
            p.push(ConfigError::invalid(
                &field_origin(defs, "attrs.limits.cpu.weight", |d| {
                    d.attrs.limits.cpu.weight == w
                }),
                format!("CPU weight {w} is outside systemd's 1–10000"),
            ));
            None
        }
    };
    let allowed = if l.cpu.allowed.is_empty() {
        None
    } else if crate::names::is_cpu_list(&l.cpu.allowed) {
        Some(l.cpu.allowed.clone())
    } else {
        p.push(ConfigError::invalid(
            &field_origin(defs, "attrs.limits.cpu.allowed", |d| {
                d.attrs.limits.cpu.allowed == l.cpu.allowed
            }),
            format!(
                "{:?} is not a CPU list like \"0-3,8\" (numbers and ranges, comma-separated)",
                l.cpu.allowed
            ),
        ));
        None
    };
    let margin = if l.memory.margin == 0 {
        MEMORY_MARGIN_MIB
    } else {
        l.memory.margin
    };
    if margin > 1 << 20 {
        p.push(ConfigError::invalid(
            &field_origin(defs, "attrs.limits.memory.margin", |d| {
                d.attrs.limits.memory.margin > 0
            }),
            format!("a memory margin of {margin} MiB is more than 1 TiB"),
        ));
    }
    let bytes = (ram_mib + margin) << 20;
    if let Some(e) = p.into_error() {
        return Err(e);
    }
    Ok(ResourceLimits {
        memory_high: l.memory.high.then_some(bytes),
        memory_max: l.memory.max.then_some(bytes),
        cpu_weight: weight,
        allowed_cpus: allowed,
    })
}

struct Ctx<'a> {
    host: &'a Host<'a>,
    name: &'a MachineName,
    id: Uuid,
    /// `id` in canonical form, for `${machine-id}`.
    id_str: String,
    description: &'a str,
    vars: &'a BTreeMap<String, String>,
    /// The definitions in merge order (for where a variable came from).
    defs: &'a [Def<'a>],
}

fn suggest_tag(host: &HostFile, tag: &TagName) -> String {
    let lower = tag.as_str().to_ascii_lowercase();
    host.tag
        .keys()
        .find(|k| k.as_str().to_ascii_lowercase() == lower)
        .map(|k| format!("; did you mean {:?}?", k.as_str()))
        .unwrap_or_default()
}

/// The origin of the first definition where `set` holds, at `key`.
fn field_origin(defs: &[Def<'_>], key: &str, set: impl Fn(&Definition) -> bool) -> Origin {
    defs.iter()
        .find(|d| set(d.def))
        .unwrap_or(&defs[0])
        .origin
        .key(key)
}

fn merge_vars(defs: &[Def<'_>]) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for d in defs {
        for (k, v) in &d.def.vars {
            vars.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    vars
}

/// The first definition that sets a field wins; booleans are OR-ed; QMP
/// socket lists are unions from the last definition back to the first.
fn merge_attrs(defs: &[Def<'_>]) -> Attributes {
    let mut a = Attributes::default();
    for d in defs.iter().rev() {
        let s = &d.def.attrs;
        if !s.firmware.code.is_empty() {
            a.firmware.code = s.firmware.code.clone();
        }
        if !s.firmware.vars.is_empty() {
            a.firmware.vars = s.firmware.vars.clone();
        }
        if !s.cpu.processor.is_empty() {
            a.cpu.processor = s.cpu.processor.clone();
        }
        set_nonzero(&mut a.cpu.sockets, s.cpu.sockets);
        set_nonzero(&mut a.cpu.cores, s.cpu.cores);
        set_nonzero(&mut a.cpu.threads, s.cpu.threads);
        set_nonzero(&mut a.memory.ram, s.memory.ram);
        a.enlightenments.enabled |= s.enlightenments.enabled;
        a.tpm.enabled |= s.tpm.enabled;
        if !s.tpm.data.is_empty() {
            a.tpm.data = s.tpm.data.clone();
        }
        if !s.tpm.socket.path.is_empty() {
            a.tpm.socket.path = s.tpm.socket.path.clone();
        }
        a.qmp.enabled |= s.qmp.enabled;
        union_into(&mut a.qmp.sockets.names, &s.qmp.sockets.names);
        union_into(&mut a.qmp.sockets.paths, &s.qmp.sockets.paths);
        a.agent.qemu.enabled |= s.agent.qemu.enabled;
        set_nonzero(&mut a.agent.qemu.port, s.agent.qemu.port);
        if !s.agent.qemu.port_pattern.is_empty() {
            a.agent.qemu.port_pattern = s.agent.qemu.port_pattern.clone();
        }
        a.spice.enabled |= s.spice.enabled;
        set_nonzero(&mut a.spice.port, s.spice.port);
        if !s.spice.port_pattern.is_empty() {
            a.spice.port_pattern = s.spice.port_pattern.clone();
        }
        set_nonzero(&mut a.spice.displays, s.spice.displays);
        a.limits.memory.high |= s.limits.memory.high;
        a.limits.memory.max |= s.limits.memory.max;
        set_nonzero(&mut a.limits.memory.margin, s.limits.memory.margin);
        set_nonzero(&mut a.limits.cpu.weight, s.limits.cpu.weight);
        if !s.limits.cpu.allowed.is_empty() {
            a.limits.cpu.allowed = s.limits.cpu.allowed.clone();
        }
        a.console.enabled |= s.console.enabled;
    }
    a
}

fn set_nonzero<T: Copy + Default + PartialEq>(dst: &mut T, src: T) {
    if src != T::default() {
        *dst = src;
    }
}

fn union_into(dst: &mut Vec<String>, src: &[String]) {
    for s in src {
        if !dst.contains(s) {
            dst.push(s.clone());
        }
    }
}

/// Concatenates a list across definitions (machine first). Across
/// definitions the first entry of a name wins (the Go tag-merge rule); within
/// one list a repeated name is a problem (the Go program dropped the second
/// entry silently). Every entry must have a name.
fn merge_named<'a, T>(
    p: &mut Problems,
    defs: &'a [Def<'a>],
    key: &str,
    what: &str,
    list: impl Fn(&'a Definition) -> &'a Vec<T>,
    name: impl Fn(&T) -> Option<String>,
) -> Vec<(&'a T, Origin)> {
    // Name, definition and index of each first entry. A VM's lists are
    // short: a scan is cheaper than hashing each name.
    let mut seen: Vec<(String, usize, usize)> = Vec::new();
    let mut out = Vec::new();
    for (di, d) in defs.iter().enumerate() {
        for (i, item) in list(d.def).iter().enumerate() {
            let Some(n) = name(item) else {
                p.push(ConfigError::invalid(
                    &d.origin.key(key).index(i).key("name"),
                    format!("a {what} needs a name"),
                ));
                continue;
            };
            match seen.iter().find(|(s, _, _)| *s == n) {
                None => {
                    seen.push((n, di, i));
                    out.push((item, d.origin.key(key).index(i)));
                }
                Some((n, first_def, first)) if *first_def == di => {
                    p.push(ConfigError::invalid(
                        &d.origin.key(key).index(i).key("name"),
                        format!(
                            "{what} {n:?} is already defined at {}[{first}]; give each {what} its own name",
                            d.origin.key(key).path,
                        ),
                    ));
                }
                // Defined by an earlier definition: the first wins.
                Some(_) => {}
            }
        }
    }
    out
}

fn resolve_qemu(host: &Host<'_>) -> Result<QemuHost, ConfigError> {
    let q = &host.file.qemu;
    let origin = Origin::new(host.path, "qemu");
    let binary = PathBuf::from(&q.binary);
    if !binary.is_absolute() {
        return Err(ConfigError::invalid(
            &origin.key("binary"),
            format!("{:?} is not an absolute path", q.binary),
        ));
    }
    check_text(|| origin.key("binary"), &q.binary)?;
    let model_ok = !q.cpu_model.is_empty()
        && q.cpu_model
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !model_ok {
        return Err(ConfigError::invalid(
            &origin.key("cpu-model"),
            format!(
                "{:?} is not a CPU model name (letters, digits, '-', '_', '.')",
                q.cpu_model
            ),
        ));
    }
    Ok(QemuHost {
        binary,
        accelerator: q.accelerator,
        cpu_model: q.cpu_model.clone(),
        vhost: q.vhost,
        nic_option_rom: q.nic_option_rom,
    })
}

fn resolve_group(
    host: &Host<'_>,
    name: &MachineName,
    defs: &[Def<'_>],
) -> Result<FsGroup, ConfigError> {
    let range = match host.file.id_range {
        Some(r) => {
            let r = IdRange {
                first: r.first,
                last: r.last,
            };
            r.check()
                .map_err(|m| ConfigError::invalid(&Origin::new(host.path, "id-range"), m))?;
            r
        }
        None => IdRange::default(),
    };
    let gname = defs
        .iter()
        .map(|d| &d.def.privileges.filesystem.group.name)
        .find(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| format!("machina-{name}"));
    let gid = defs
        .iter()
        .map(|d| d.def.privileges.filesystem.group.id)
        .find(|&id| id != 0);
    // The Go program computed and printed this id but never applied it;
    // machina runs QEMU as it, so a system id is refused where it would be
    // used (gen, launch) and only reported by args, cat and check.
    let refused = gid.and_then(|id| {
        let what = match crate::identity::check_vm_id_range(id) {
            Ok(()) => return None,
            Err(crate::identity::VmIdError::Reserved { what, .. }) => what,
            Err(_) => "not allowed",
        };
        Some((
            field_origin(defs, "privileges.filesystem.group.id", |d| d.privileges.filesystem.group.id != 0),
            format!("group id {id} is {what}, and machina runs the VM's QEMU as this uid/gid (the Go program never applied it); remove the key to get a derived id from \"id-range\", or set an unused id in 1000–60000 or 65536–524287"),
        ))
    });
    Ok(FsGroup {
        name: gname,
        id: gid,
        range,
        refused,
    })
}

fn resolve_cpu(
    ctx: &Ctx<'_>,
    defs: &[Def<'_>],
    attrs: &Attributes,
) -> Result<CpuSpec, ConfigError> {
    let procs = &ctx.host.file.processor;
    let chosen = if attrs.cpu.processor.is_empty() {
        procs
            .iter()
            .find(|(_, p)| p.default)
            .or_else(|| procs.iter().next())
    } else {
        let p = procs.get_key_value(&attrs.cpu.processor).ok_or_else(|| {
            ConfigError::invalid(
                &field_origin(defs, "attrs.cpu.processor", |d| {
                    !d.attrs.cpu.processor.is_empty()
                }),
                format!(
                    "processor {:?} is not defined in the host file's \"processor\" map",
                    attrs.cpu.processor
                ),
            )
        })?;
        Some(p)
    };
    let (brand, mut threads) = match chosen {
        Some((_, p)) => {
            let brand = if p.brand.eq_ignore_ascii_case("amd") {
                Brand::Amd
            } else if p.brand.eq_ignore_ascii_case("intel") {
                Brand::Intel
            } else {
                Brand::Other
            };
            (brand, p.threads)
        }
        None => (Brand::Other, 0),
    };
    set_nonzero(&mut threads, attrs.cpu.threads);
    let spec = CpuSpec {
        brand,
        sockets: attrs.cpu.sockets,
        cores: attrs.cpu.cores,
        threads,
    };
    let total = u64::from(spec.sockets.max(1))
        * u64::from(spec.cores.max(1))
        * u64::from(spec.threads.max(1));
    if total > 1024 {
        return Err(ConfigError::invalid(
            &defs[0].origin.key("attrs.cpu"),
            format!("{total} vCPUs (sockets × cores × threads) is more than 1024"),
        ));
    }
    Ok(spec)
}

fn resolve_firmware(
    ctx: &Ctx<'_>,
    defs: &[Def<'_>],
    attrs: &Attributes,
) -> Result<Option<FirmwareSpec>, ConfigError> {
    let fw = &attrs.firmware;
    let code_origin = field_origin(defs, "attrs.firmware.code", |d| {
        !d.attrs.firmware.code.is_empty()
    });
    let vars_origin = field_origin(defs, "attrs.firmware.vars", |d| {
        !d.attrs.firmware.vars.is_empty()
    });
    if fw.code.is_empty() {
        if !fw.vars.is_empty() {
            // The Go program silently ignored vars without code.
            return Err(ConfigError::invalid(
                &vars_origin,
                "firmware variables are set but firmware code is not",
            ));
        }
        return Ok(None);
    }
    let code = resolve_volume(ctx, &fw.code, &code_origin, false)?;
    let vars = if fw.vars.is_empty() {
        None
    } else {
        Some(resolve_volume(ctx, &fw.vars, &vars_origin, false)?)
    };
    for v in std::iter::once(&code).chain(vars.as_ref()) {
        if v.kind != StorageType::Firmware {
            return Err(ConfigError::invalid(
                &v.origin.key("storage"),
                format!(
                    "firmware volume uses storage pool {:?} of type {:?}; firmware needs a pool of type \"firmware\"",
                    v.pool.as_str(),
                    v.kind.as_str()
                ),
            ));
        }
    }
    Ok(Some(FirmwareSpec { code, vars }))
}

fn resolve_tpm(
    ctx: &Ctx<'_>,
    defs: &[Def<'_>],
    attrs: &Attributes,
) -> Result<Option<TpmSpec>, ConfigError> {
    if !attrs.tpm.enabled {
        return Ok(None);
    }
    let socket = if attrs.tpm.socket.path.is_empty() {
        PathBuf::from(format!("{RUNTIME_ROOT}/{}/swtpm/control.socket", ctx.name))
    } else {
        let origin = field_origin(defs, "attrs.tpm.socket.path", |d| {
            !d.attrs.tpm.socket.path.is_empty()
        });
        check_socket_path(&origin, &attrs.tpm.socket.path)?
    };
    let data = if attrs.tpm.data.is_empty() {
        None
    } else {
        let origin = field_origin(defs, "attrs.tpm.data", |d| !d.attrs.tpm.data.is_empty());
        Some(resolve_volume(ctx, &attrs.tpm.data, &origin, false)?.path)
    };
    Ok(Some(TpmSpec { socket, data }))
}

fn resolve_qmp(
    ctx: &Ctx<'_>,
    defs: &[Def<'_>],
    attrs: &Attributes,
) -> Result<Vec<PathBuf>, ConfigError> {
    if !attrs.qmp.enabled {
        return Ok(Vec::new());
    }
    let dir = format!("{RUNTIME_ROOT}/{}/qmp/", ctx.name);
    // `<dir><n>.qmp.socket`, sized at once (three or more per VM).
    let socket = |n: &str| {
        let mut p = String::with_capacity(dir.len() + n.len() + 11);
        p.push_str(&dir);
        p.push_str(n);
        p.push_str(".qmp.socket");
        PathBuf::from(p)
    };
    let mut paths: Vec<PathBuf> = Vec::with_capacity(3 + attrs.qmp.sockets.names.len());
    paths.extend(["systemd.0", "command.0", "command.1"].map(socket));
    for n in &attrs.qmp.sockets.names {
        let origin = field_origin(defs, "attrs.qmp.sockets.names", |d| {
            d.attrs.qmp.sockets.names.contains(n)
        });
        crate::names::check_name("QMP socket", n)
            .map_err(|e| ConfigError::invalid(&origin, e.to_string()))?;
        paths.push(socket(n));
    }
    for p in &attrs.qmp.sockets.paths {
        let origin = field_origin(defs, "attrs.qmp.sockets.paths", |d| {
            d.attrs.qmp.sockets.paths.contains(p)
        });
        paths.push(check_socket_path(&origin, p)?);
    }
    // The three defaults are distinct: only sockets the files add can
    // repeat one.
    if paths.len() > 3 {
        let mut seen = HashSet::new();
        paths.retain(|p| seen.insert(p.clone()));
    }
    for p in &paths {
        if p.as_os_str().len() > 107 {
            return Err(ConfigError::invalid(
                &defs[0].origin.key("attrs.qmp.sockets"),
                format!(
                    "QMP socket path {} is longer than 107 bytes (the UNIX socket limit)",
                    p.display()
                ),
            ));
        }
    }
    Ok(paths)
}

fn check_socket_path(origin: &Origin, p: &str) -> Result<PathBuf, ConfigError> {
    check_text(|| origin.clone(), p)?;
    let path = PathBuf::from(p);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(ConfigError::invalid(
            origin,
            format!("{p:?} is not an absolute path without '..'"),
        ));
    }
    if p.len() > 107 {
        return Err(ConfigError::invalid(
            origin,
            format!("{p:?} is longer than 107 bytes (the UNIX socket limit)"),
        ));
    }
    Ok(path)
}

/// The port getter of one definition: fixed port and pattern.
type PortField = for<'x> fn(&'x Definition) -> (u32, &'x str);

fn resolve_port(
    ctx: &Ctx<'_>,
    defs: &[Def<'_>],
    key: &str,
    port: u32,
    pattern: &str,
    get: PortField,
) -> Result<u16, ConfigError> {
    // Origins are only worked out for an error message.
    let fixed = port != 0;
    let origin = || {
        if fixed {
            field_origin(defs, &format!("{key}.port"), |d| get(d).0 != 0)
        } else {
            field_origin(defs, &format!("{key}.port-pattern"), |d| {
                !get(d).1.is_empty()
            })
        }
    };
    let value = if fixed {
        i64::from(port)
    } else {
        let lookup = |k: &str| ctx.vars.get(k).map(String::as_str);
        port_from_pattern(pattern, lookup).map_err(|e| {
            ConfigError::invalid(&origin(), format!("{e}{}", pattern_vars(ctx, pattern)))
        })?
    };
    if !(MIN_PORT..=65535).contains(&value) {
        let why = if fixed {
            String::new()
        } else {
            format!(" (pattern {pattern:?}{})", pattern_vars(ctx, pattern))
        };
        return Err(ConfigError::invalid(
            &origin(),
            format!(
                "port {value}{why} is outside {MIN_PORT}–65535 (QEMU runs unprivileged); change the {}",
                if fixed { "port" } else { "pattern or the variable" }
            ),
        ));
    }
    Ok(value as u16)
}

/// The variables a pattern uses, with their values and where each is set:
/// `; ${employee-id} = "90000" (vm.conf.json: vars.employee-id)`.
fn pattern_vars(ctx: &Ctx<'_>, pattern: &str) -> String {
    let used = std::cell::RefCell::new(Vec::<String>::new());
    let _ = expand(pattern, |k| {
        let mut u = used.borrow_mut();
        if !u.iter().any(|x| x == k) {
            u.push(k.to_owned());
        }
        None
    });
    used.into_inner()
        .iter()
        .map(|k| {
            let at = ctx.defs.iter().find(|d| d.def.vars.contains_key(k));
            match (ctx.vars.get(k), at) {
                (Some(v), Some(d)) => format!(
                    "; ${{{k}}} = {v:?} ({})",
                    d.origin.key(&format!("vars.{k}"))
                ),
                _ => {
                    format!("; ${{{k}}} is not set in the machine or its tags (it expands to \"\")")
                }
            }
        })
        .collect()
}

/// Rejects control characters (newlines in particular) in text that reaches
/// QEMU options or unit files.
fn check_text(origin: impl FnOnce() -> Origin, s: &str) -> Result<(), ConfigError> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(ConfigError::invalid(
            &origin(),
            format!("contains the control character {c:?}"),
        ));
    }
    Ok(())
}

fn resolve_volume(
    ctx: &Ctx<'_>,
    v: &Volume,
    origin: &Origin,
    populate: bool,
) -> Result<ResolvedVolume, ConfigError> {
    let name = v
        .name
        .clone()
        .ok_or_else(|| ConfigError::invalid(&origin.key("name"), "a name is required"))?;
    let pool_name = v.storage.clone().ok_or_else(|| {
        ConfigError::invalid(&origin.key("storage"), "a storage pool is required")
    })?;
    let pool = ctx.host.file.storage.get(&pool_name).ok_or_else(|| {
        ConfigError::invalid(
            &origin.key("storage"),
            format!(
                "storage pool {:?} is not defined in {}",
                pool_name.as_str(),
                ctx.host.path.display()
            ),
        )
    })?;
    let porigin = || Origin::new(ctx.host.path, format!("storage.{pool_name}"));
    check_text(|| porigin().key("path"), &pool.path)?;
    if !pool.path.starts_with('/') {
        return Err(ConfigError::invalid(
            &porigin().key("path"),
            format!("{:?} is not an absolute path", pool.path),
        ));
    }
    let file_name = if pool.pattern.is_empty() {
        format!("{name}.{}", pool.kind.as_str())
    } else {
        let lookup = |k: &str| -> Option<&str> {
            match k {
                "machine-name" => Some(ctx.name.as_str()),
                "machine-description" => Some(ctx.description),
                "machine-id" => Some(&ctx.id_str),
                "volume" => Some(name.as_str()),
                other => ctx.vars.get(other).map(String::as_str),
            }
        };
        expand(&pool.pattern, lookup)
    };
    check_text(|| porigin().key("pattern"), &file_name)?;
    let base = clean_join(&[&pool.path]);
    // Joined as strings and cleaned, as the Go program's filepath.Join does:
    // an expansion starting with '/' stays inside the pool (Path::join would
    // replace the base).
    let path = clean_join(&[&base, &file_name]);
    let inside = path.len() > base.len()
        && path.starts_with(&base)
        && (base == "/" || path.as_bytes()[base.len()] == b'/');
    if !inside {
        return Err(ConfigError::invalid(
            origin,
            format!(
                "volume path {} (pattern {:?} of pool {:?}) is not inside the pool directory {}",
                path,
                pool.pattern,
                pool_name.as_str(),
                base
            ),
        ));
    }
    let wwn = match Wwn::parse(&v.wwn)
        .map_err(|e| ConfigError::invalid(&origin.key("wwn"), e.to_string()))?
    {
        Some(w) => Some(w),
        // Derived only where a device carries it (SCSI disks); `cat`
        // derives the rest for display, which keeps generation cheap.
        None if populate && matches!(pool.kind, StorageType::Raw | StorageType::RawScsi) => Some(
            identity::volume_wwn(&ctx.id, ctx.name.as_str(), name.as_str()),
        ),
        None => None,
    };
    check_text(|| origin.key("serial"), &v.serial)?;
    let serial = if v.serial.is_empty()
        && populate
        && matches!(
            pool.kind,
            StorageType::Raw
                | StorageType::RawScsi
                | StorageType::RawBlock
                | StorageType::VvfatBlock
        ) {
        identity::volume_serial(&ctx.id, ctx.name.as_str(), name.as_str())
    } else {
        v.serial.clone()
    };
    if matches!(pool.kind, StorageType::Raw | StorageType::RawScsi) && serial.len() > 36 {
        return Err(ConfigError::invalid(
            &origin.key("serial"),
            "a SCSI disk serial is at most 36 characters",
        ));
    }
    Ok(ResolvedVolume {
        name,
        pool: pool_name,
        kind: pool.kind,
        readonly: pool.readonly,
        path: path.into(),
        wwn,
        serial,
        bootable: v.bootable,
        origin: origin.clone(),
    })
}

/// Lexically cleans the absolute path `parts` make joined by `/`, as Go's
/// `filepath.Join` does: `.` and empty components dropped, `..` resolved
/// (never above `/`), no trailing slash. On strings, in one pass: every
/// volume of every VM comes through here.
fn clean_join(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for p in parts {
        let b = p.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'/' {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && b[i] != b'/' {
                i += 1;
            }
            // Split at '/' (ASCII): `start..i` are char boundaries.
            match &p[start..i] {
                "." => {}
                ".." => out.truncate(out.rfind('/').unwrap_or(0)),
                c => {
                    out.push('/');
                    out.push_str(c);
                }
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn resolve_connection(
    ctx: &Ctx<'_>,
    c: &Connection,
    origin: &Origin,
) -> Result<ResolvedConnection, ConfigError> {
    let name = c
        .name
        .clone()
        .ok_or_else(|| ConfigError::invalid(&origin.key("name"), "a name is required"))?;
    let network = c
        .network
        .clone()
        .ok_or_else(|| ConfigError::invalid(&origin.key("network"), "a network is required"))?;
    let net = ctx.host.file.network.get(&network).ok_or_else(|| {
        ConfigError::invalid(
            &origin.key("network"),
            format!(
                "network {:?} is not defined in {}",
                network.as_str(),
                ctx.host.path.display()
            ),
        )
    })?;
    let bridge = InterfaceName::new(net.device.clone()).map_err(|e| {
        ConfigError::invalid(
            &Origin::new(ctx.host.path, format!("network.{network}.device")),
            e.to_string(),
        )
    })?;
    check_text(|| origin.key("ip"), &c.ip)?;
    let mac = if c.mac.is_empty() {
        identity::connection_mac(&ctx.id, ctx.name.as_str(), name.as_str())
    } else {
        check_mac(&c.mac).map_err(|m| ConfigError::invalid(&origin.key("mac"), m))?
    };
    let queues = c.queues.max(1);
    if queues > 16 {
        return Err(ConfigError::invalid(
            &origin.key("queues"),
            format!("{queues} queues is more than 16"),
        ));
    }
    Ok(ResolvedConnection {
        ifname: link_name(ctx.name.as_str(), name.as_str()),
        name,
        network,
        bridge,
        ip: c.ip.clone(),
        mac,
        queues,
        origin: origin.clone(),
    })
}

/// Checks a unicast MAC in `xx:xx:xx:xx:xx:xx` or `xx-xx-xx-xx-xx-xx` form
/// (QEMU accepts both) and returns it with `:`.
fn check_mac(mac: &str) -> Result<String, String> {
    let sep = if mac.contains('-') && !mac.contains(':') {
        '-'
    } else {
        ':'
    };
    let parts: Vec<&str> = mac.split(sep).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(format!(
            "{mac:?} is not a MAC address like 52:54:00:12:34:56"
        ));
    }
    let first = u8::from_str_radix(parts[0], 16).expect("checked hex");
    if first & 1 == 1 {
        return Err(format!(
            "{mac:?} is a multicast address; a NIC needs a unicast one"
        ));
    }
    Ok(parts.join(":"))
}

/// The TAP name: `<machine>.<conn>`, or past 15 bytes the first 11 bytes of
/// its SHA3-224 in unpadded URL-safe base64 (the Go rule).
pub fn link_name(machine: &str, conn: &str) -> InterfaceName {
    use sha3::{Digest, Sha3_224};
    let full = format!("{machine}.{conn}");
    if full.len() <= InterfaceName::MAX_LEN {
        if let Ok(n) = InterfaceName::new(full.clone()) {
            return n;
        }
    }
    let digest = Sha3_224::digest(full.as_bytes());
    InterfaceName::new(base64url_nopad(&digest[..11]))
        .expect("base64url of 11 bytes is a valid interface name")
}

fn base64url_nopad(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn resolve_device(
    ctx: &Ctx<'_>,
    d: &Device,
    origin: &Origin,
) -> Result<ResolvedDevice, ConfigError> {
    let name = d
        .name
        .clone()
        .ok_or_else(|| ConfigError::invalid(&origin.key("name"), "a name is required"))?;
    let class = d
        .class
        .clone()
        .ok_or_else(|| ConfigError::invalid(&origin.key("class"), "a device class is required"))?;
    let mut parents = Vec::new();
    for (key, md) in &ctx.host.file.mediated_device {
        if let Some(c) = md.classes.get(&class) {
            parents.push(mdev_parent(
                ctx,
                &format!("mediated-device.{key}"),
                &md.address,
                &c.name,
                &c.placements,
                md.heterogeneous,
            )?);
        }
    }
    for (key, md) in &ctx.host.file.mdev {
        if let Some(t) = md.types.get(&class) {
            parents.push(mdev_parent(
                ctx,
                &format!("mdev.{key}"),
                &md.address,
                t,
                &[],
                false,
            )?);
        }
    }
    if parents.is_empty() {
        return Err(ConfigError::invalid(
            &origin.key("class"),
            format!(
                "device class {:?} is not supplied by any entry of \"mediated-device\" in {}",
                class.as_str(),
                ctx.host.path.display()
            ),
        ));
    }
    parents.sort_by(|a, b| a.address.cmp(&b.address));
    let uuid = match d.id {
        Some(id) if !id.is_nil() => id,
        _ => identity::device_uuid(&ctx.id, ctx.name.as_str(), class.as_str(), name.as_str()),
    };
    Ok(ResolvedDevice {
        name,
        class,
        uuid,
        parents,
        origin: origin.clone(),
    })
}

fn mdev_parent(
    ctx: &Ctx<'_>,
    key: &str,
    address: &str,
    type_name: &str,
    placements: &[u32],
    heterogeneous: bool,
) -> Result<MdevParent, ConfigError> {
    let origin = Origin::new(ctx.host.path, key);
    if !crate::names::is_pci_address(address) {
        return Err(ConfigError::invalid(
            &origin.key("address"),
            format!(
                "{address:?} is not a PCI address like 0000:c1:00.0 (lowercase, as sysfs names it)"
            ),
        ));
    }
    if type_name.is_empty() {
        return Err(ConfigError::invalid(&origin, "the mdev type name is empty"));
    }
    check_text(|| origin.clone(), type_name)?;
    Ok(MdevParent {
        address: address.to_owned(),
        type_name: type_name.to_owned(),
        placements: placements.to_vec(),
        heterogeneous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_match_go_vectors() {
        assert_eq!(link_name("test-vm", "0").as_str(), "test-vm.0");
        assert_eq!(
            link_name("a very-long-machine-name", "eth0").as_str(),
            "tdHhUuAdrsvDhfY"
        );
        assert_eq!(
            link_name("a very-long-machine-name", "").as_str(),
            "_E1iIf2MEldmFr4"
        );
        assert_eq!(link_name("exactly-fifteen", "x").as_str().len(), 15);
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean_join(&["/zfs-tank//a/../b/"]), "/zfs-tank/b");
        assert_eq!(clean_join(&["/../../etc"]), "/etc");
        assert_eq!(
            clean_join(&["/zfs-tank/", "/vm/./x.raw"]),
            "/zfs-tank/vm/x.raw"
        );
        assert_eq!(clean_join(&["/", ".."]), "/");
        assert_eq!(clean_join(&["/a/b", "../../.."]), "/");
        assert_eq!(clean_join(&["/"]), "/");
    }

    #[test]
    fn macs_and_pci() {
        check_mac("52:54:00:26:77:fa").unwrap();
        assert_eq!(check_mac("52-54-00-26-77-FA").unwrap(), "52:54:00:26:77:FA");
        assert!(check_mac("52-54-00:26:77:fa").is_err());
        assert!(check_mac("53:54:00:26:77:fa").is_err());
        assert!(check_mac("52:54:00:26:77").is_err());
        assert!(check_mac("52:54:00:26:77:fa,x=y").is_err());
        use crate::names::is_pci_address;
        assert!(is_pci_address("0000:c1:00.0"));
        assert!(!is_pci_address("0000:C1:00.0"), "sysfs names are lowercase");
        assert!(!is_pci_address("0000:c1:00.0/../x"));
        assert!(!is_pci_address("0000:c1:00.8"));
    }
}
