//! Merge rules, pattern semantics and the QEMU hardware each storage type,
//! connection and attribute produces (reference §2.10, §2.11, §3).

use std::path::Path;

use machina::config::{self, Host, HostFile, Machine, MachineFile};
use machina::names::MachineName;
use serde_json::{json, Value};

/// The machine id the tests use when a case does not set one (a machine
/// file without `id` is refused).
const ID: &str = "8b18191a-234f-45ce-b43c-b46e28cd2f70";

fn build(host: Value, mut machine: Value) -> Result<Machine, String> {
    if machine.get("id").is_none() {
        machine["id"] = json!(ID);
    }
    let h: HostFile =
        config::parse(Path::new("host.json"), &host.to_string()).map_err(|e| e.to_string())?;
    let m: MachineFile =
        config::parse(Path::new("vm.json"), &machine.to_string()).map_err(|e| e.to_string())?;
    config::build(
        &Host {
            file: &h,
            path: Path::new("host.json"),
        },
        &MachineName::new("vm").unwrap(),
        &m,
        Path::new("vm.json"),
    )
    .map_err(|e| e.to_string())
}

fn args(host: Value, machine: Value) -> Vec<String> {
    let m = build(host, machine).expect("builds");
    machina::qemu::build(&m).expect("hardware").argv()
}

/// The parameter strings of every `-<kind>` option.
fn opts(argv: &[String], kind: &str) -> Vec<String> {
    argv.windows(2)
        .filter(|w| w[0] == format!("-{kind}"))
        .map(|w| w[1].clone())
        .collect()
}

fn host() -> Value {
    json!({
        "storage": {
            "raw": {"path": "/vm", "type": "raw"},
            "scsi": {"path": "/vm", "pattern": "${machine-name}-${volume}.img", "type": "raw-scsi"},
            "blk": {"path": "/vm", "type": "raw-block"},
            "fat": {"path": "/share", "pattern": "${volume}", "type": "vvfat-block"},
            "ahci": {"path": "/iso", "pattern": "${volume}.iso", "type": "iso-ahci"},
            "iscsi": {"path": "/iso", "pattern": "${volume}.iso", "type": "iso-scsi"},
            "usb": {"path": "/iso", "pattern": "${volume}.iso", "type": "iso-usb"},
            "ro": {"path": "/golden", "type": "raw", "readonly": true},
            "fw": {"path": "/fw", "pattern": "${volume}.fd", "type": "firmware", "readonly": true},
            "vars": {"path": "/vm", "pattern": "${machine-name}-${volume}.fd", "type": "firmware"},
            "tpm": {"path": "/tpm", "type": "tpm-data"}
        },
        "network": {"lan": {"device": "br0"}},
        "processor": {"epyc": {"brand": "AMD", "threads": 2}, "xeon": {"brand": "intel", "default": true}},
        "tag": {
            "t1": {"vars": {"a": "t1", "b": "t1"}, "attrs": {"memory": {"ram": 1024}, "cpu": {"cores": 2}, "qmp": {"enabled": true, "sockets": {"names": ["t1a", "shared"]}}, "spice": {"enabled": true, "port": 5901}},
                   "volumes": [{"name": "os", "storage": "blk"}, {"name": "data", "storage": "raw"}]},
            "t2": {"vars": {"a": "t2", "c": "t2"}, "attrs": {"memory": {"ram": 2048}, "cpu": {"cores": 8, "sockets": 2}, "qmp": {"sockets": {"names": ["t2a", "shared"]}}},
                   "connections": [{"name": "0", "network": "lan"}]}
        }
    })
}

#[test]
fn merge_rules() {
    let m = build(
        host(),
        json!({"tags": ["t1", "t2"], "vars": {"a": "m"}, "attrs": {"memory": {"ram": 0}, "qmp": {"sockets": {"names": ["m1"]}}, "spice": {"enabled": false}},
               "volumes": [{"name": "os", "storage": "raw"}]}),
    )
    .unwrap();
    // vars: the first definition (machine, then tags in order) wins per key.
    assert_eq!(m.vars["a"], "m");
    assert_eq!(m.vars["b"], "t1");
    assert_eq!(m.vars["c"], "t2");
    // scalars: the first definition that sets a field wins; 0 is unset.
    assert_eq!(m.ram_mib, 1024);
    assert_eq!((m.cpu.sockets, m.cpu.cores), (2, 2));
    // booleans are OR-ed: the machine cannot switch off the tag's spice.
    assert!(m.spice.is_some());
    // QMP names: union from the last tag back to the machine.
    let names: Vec<String> = m
        .qmp_sockets
        .iter()
        .skip(3)
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "t2a.qmp.socket",
            "shared.qmp.socket",
            "t1a.qmp.socket",
            "m1.qmp.socket"
        ]
    );
    // lists: machine first, deduplicated by name keeping the first.
    let vols: Vec<(&str, &str)> = m
        .volumes
        .iter()
        .map(|v| (v.name.as_str(), v.pool.as_str()))
        .collect();
    assert_eq!(vols, [("os", "raw"), ("data", "raw")]);
    assert_eq!(m.connections.len(), 1);
}

#[test]
fn processor_threads_and_brand_flags() {
    let a = args(
        host(),
        json!({"attrs": {"memory": {"ram": 64}, "cpu": {"processor": "epyc", "sockets": 1}, "enlightenments": {"enabled": true}}}),
    );
    let cpu = &opts(&a, "cpu")[0];
    assert!(cpu.starts_with("host,topoext=on,hv-relaxed,"), "{cpu}");
    assert!(cpu.ends_with("hv-tlbflush-direct,hv-avic=on"), "{cpu}");
    assert_eq!(opts(&a, "smp"), ["sockets=1,threads=2"]);
    // The default processor (Intel) applies when none is named.
    let a = args(
        host(),
        json!({"attrs": {"memory": {"ram": 64}, "enlightenments": {"enabled": true}}}),
    );
    assert!(opts(&a, "cpu")[0].ends_with(",hv-evmcs"));
    assert!(opts(&a, "smp").is_empty());
}

#[test]
fn every_storage_type() {
    let a = args(
        host(),
        json!({"attrs": {"memory": {"ram": 64}}, "volumes": [
            {"name": "os", "storage": "raw", "bootable": true, "serial": "a,b"},
            {"name": "data", "storage": "scsi", "wwn": "0x5000c500a1b2c3d4"},
            {"name": "fast", "storage": "blk", "bootable": true},
            {"name": "share", "storage": "fat", "bootable": true},
            {"name": "cd1", "storage": "ahci", "bootable": true},
            {"name": "cd2", "storage": "ahci"},
            {"name": "inst", "storage": "iscsi"},
            {"name": "stick", "storage": "usb"},
            {"name": "base", "storage": "ro"},
            {"name": "state", "storage": "tpm"}
        ]}),
    );
    let blockdevs = opts(&a, "blockdev");
    assert!(blockdevs.contains(
        &"driver=file,node-name=vm-os-file,discard=unmap,filename=/vm/os.raw".to_owned()
    ));
    assert!(blockdevs.contains(
        &"driver=raw,node-name=vm-os,discard=unmap,detect-zeroes=unmap,file=vm-os-file".to_owned()
    ));
    assert!(blockdevs.contains(
        &"driver=file,node-name=vm-data-file,discard=unmap,filename=/vm/vm-data.img".to_owned()
    ));
    assert!(blockdevs
        .contains(&"driver=vvfat,node-name=vm-share,read-only=on,dir=/share/share".to_owned()));
    assert!(blockdevs
        .contains(&"driver=file,node-name=cd1,read-only=on,filename=/iso/cd1.iso".to_owned()));
    // A read-only pool makes both nodes read-only (the Go program left the
    // format node writable).
    assert!(blockdevs.contains(
        &"driver=file,node-name=vm-base-file,read-only=on,discard=unmap,filename=/golden/base.raw"
            .to_owned()
    ));
    assert!(blockdevs.contains(&"driver=raw,node-name=vm-base,read-only=on,discard=unmap,detect-zeroes=unmap,file=vm-base-file".to_owned()));
    assert!(
        !blockdevs.iter().any(|b| b.contains("state")),
        "tpm-data makes no node"
    );
    let devices = opts(&a, "device");
    let find = |p: &str| {
        devices
            .iter()
            .find(|d| d.starts_with(p))
            .unwrap_or_else(|| panic!("no {p} in {devices:?}"))
            .clone()
    };
    // Commas in values are doubled, never injected.
    let os = find("scsi-hd,id=scsi.0.0,");
    assert!(
        os.contains(",drive=vm-os,wwn=0x") && os.ends_with(",serial=a,,b,bootindex=1"),
        "{os}"
    );
    assert!(
        find("scsi-hd,id=scsi.0.1,").contains("lun=1,drive=vm-data,wwn=0x5000C500A1B2C3D4,serial=")
    );
    assert!(find("virtio-blk-pci,id=block.0,")
        .contains("iothread=iothread.0,num-queues=4,drive=vm-fast,serial="));
    assert!(find("virtio-blk-pci,id=block.0,").ends_with(",bootindex=2"));
    let share = find("virtio-blk-pci,id=block.1,");
    assert!(
        share.contains("drive=vm-share,serial=") && share.ends_with(",bootindex=3"),
        "{share}"
    );
    // ISOs ignore bootable; each AHCI CD gets its own port.
    assert_eq!(
        find("ide-cd,id=sata.0"),
        "ide-cd,id=sata.0,bus=ide.1,drive=cd1"
    );
    assert_eq!(
        find("ide-cd,id=sata.1"),
        "ide-cd,id=sata.1,bus=ide.2,drive=cd2"
    );
    assert_eq!(
        find("scsi-cd"),
        "scsi-cd,id=scsi.0.2,bus=scsi.0,channel=0,scsi-id=0,lun=2,drive=inst"
    );
    assert_eq!(
        find("usb-storage"),
        "usb-storage,id=usb.0.1,bus=usb.0,port=1,drive=stick"
    );
    assert_eq!(opts(&a, "object"), ["iothread,id=iothread.0"]);
}

#[test]
fn firmware_nodes() {
    let a = args(
        host(),
        json!({"attrs": {"memory": {"ram": 64}, "firmware": {"code": {"name": "OVMF_CODE", "storage": "fw"}, "vars": {"name": "efi", "storage": "vars"}}}}),
    );
    assert_eq!(
        opts(&a, "machine"),
        ["type=q35,pflash0=OVMF_CODE,pflash1=vm-efi"]
    );
    let b = opts(&a, "blockdev");
    assert_eq!(
        b[0],
        "driver=file,node-name=OVMF_CODE,read-only=on,filename=/fw/OVMF_CODE.fd"
    );
    assert_eq!(b[1], "driver=file,node-name=vm-efi,filename=/vm/vm-efi.fd");
    assert_eq!(
        opts(&a, "global"),
        ["driver=cfi.pflash01,property=secure,value=on"]
    );
}

#[test]
fn tpm_takes_index_one() {
    let a = args(
        host(),
        json!({"attrs": {"memory": {"ram": 64}, "tpm": {"enabled": true}}, "connections": [{"name": "0", "network": "lan"}]}),
    );
    assert_eq!(
        opts(&a, "chardev"),
        ["socket,id=tpm.0.socket,path=/run/machina/vm/swtpm/control.socket"]
    );
    assert_eq!(
        opts(&a, "tpmdev"),
        ["emulator,id=tpm.0,chardev=tpm.0.socket"]
    );
    let d = opts(&a, "device");
    assert_eq!(d[1], "tpm-crb,tpmdev=tpm.0");
    assert!(d[2].starts_with("ioh3420,id=pcie.1.2,chassis=2,"));
}

#[test]
fn spice_without_agent_orders_qxl_first() {
    let a = args(
        host(),
        json!({"attrs": {"memory": {"ram": 64}, "spice": {"enabled": true, "port": 5999, "displays": 9}}}),
    );
    let d = opts(&a, "device");
    assert_eq!(d[1], "qxl-vga,id=qxl.0,bus=pcie.0,addr=1.1");
    assert_eq!(
        d[4], "qxl,id=qxl.3,bus=pcie.0,addr=1.4",
        "displays clamp to 4 heads"
    );
    assert!(d[5].starts_with("ioh3420,id=pcie.1.5"));
    assert_eq!(d[6], "virtio-serial-pci,id=serial,bus=pcie.1.5");
    assert_eq!(opts(&a, "machine"), ["type=q35,vmport=off"]);
}

#[test]
fn connections_multiqueue_vhost_and_options() {
    let mut h = host();
    let a = args(
        h.clone(),
        json!({"attrs": {"memory": {"ram": 64}}, "connections": [{"name": "0", "network": "lan", "queues": 2}, {"name": "1", "network": "lan", "mac": "52:54:00:00:00:01"}]}),
    );
    assert_eq!(
        opts(&a, "netdev"),
        [
            "tap,id=net.0,fds=3:5,vhost=on,vhostfds=4:6",
            "tap,id=net.1,fd=7,vhost=on,vhostfd=8"
        ]
    );
    let d = opts(&a, "device");
    assert!(d[2].ends_with(",netdev=net.0,mq=on,vectors=6"), "{}", d[2]);
    assert_eq!(
        d[4],
        "virtio-net-pci,bus=pcie.1.2,mac=52:54:00:00:00:01,netdev=net.1"
    );
    h["qemu"] = json!({"vhost": false, "nic-option-rom": false, "accelerator": "tcg", "cpu-model": "qemu64", "binary": "/opt/qemu/bin/qemu-system-x86_64"});
    let m = build(
        h,
        json!({"attrs": {"memory": {"ram": 64}}, "connections": [{"name": "0", "network": "lan"}]}),
    )
    .unwrap();
    let hw = machina::qemu::build(&m).unwrap();
    let a = hw.argv();
    assert_eq!(opts(&a, "netdev"), ["tap,id=net.0,fd=3"]);
    assert!(opts(&a, "device")[2].ends_with(",netdev=net.0,romfile="));
    assert_eq!(opts(&a, "accel"), ["tcg"]);
    assert!(!a.contains(&"-enable-kvm".to_owned()));
    assert_eq!(opts(&a, "cpu"), ["qemu64"]);
    let plan = machina::plan::plan_for(&m, hw, 70000, Path::new("/sys"));
    assert_eq!(
        plan.qemu.binary,
        Path::new("/opt/qemu/bin/qemu-system-x86_64")
    );
    assert_eq!(plan.taps[0].fds, [3]);
    assert!(plan.taps[0].vhost_fds.is_empty());
    plan.check().unwrap();
}

#[test]
fn storage_patterns_see_builtins_first_port_patterns_only_user_vars() {
    let mut h = host();
    h["storage"]["raw"]["pattern"] = json!("${machine-name}/${disk}-${volume}.raw");
    let m = build(
        h,
        json!({"vars": {"machine-name": "override", "disk": "d", "seat": "12"},
               "attrs": {"memory": {"ram": 64}, "spice": {"enabled": true, "port-pattern": "$((5900 + ${seat}))"},
                         "agent": {"qemu": {"enabled": true, "port-pattern": "4${machine-name}"}}},
               "volumes": [{"name": "os", "storage": "raw"}]}),
    )
    .unwrap_err();
    // Port patterns see only user vars: machine-name is the user's value
    // "override", so "4override" is not a number.
    assert!(
        m.contains("attrs.agent.qemu.port-pattern") && m.contains("4override"),
        "{m}"
    );
    let mut h = host();
    h["storage"]["raw"]["pattern"] = json!("${machine-name}/${disk}-${volume}.raw");
    let m = build(
        h,
        json!({"vars": {"machine-name": "override", "disk": "d", "seat": "12"},
               "attrs": {"memory": {"ram": 64}, "spice": {"enabled": true, "port-pattern": "$((5900 + ${seat}))"}},
               "volumes": [{"name": "os", "storage": "raw"}]}),
    )
    .unwrap();
    assert_eq!(
        m.volumes[0].path,
        Path::new("/vm/vm/d-os.raw"),
        "built-ins win over user vars"
    );
    assert_eq!(m.spice.unwrap().port, 5912);
}

#[test]
fn qmp_socket_dedup_and_paths() {
    let m = build(host(), json!({"attrs": {"memory": {"ram": 64}, "qmp": {"enabled": true, "sockets": {"names": ["command.0", "extra"], "paths": ["/run/other.sock"]}}}})).unwrap();
    let p: Vec<String> = m
        .qmp_sockets
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        p,
        [
            "/run/machina/vm/qmp/systemd.0.qmp.socket",
            "/run/machina/vm/qmp/command.0.qmp.socket",
            "/run/machina/vm/qmp/command.1.qmp.socket",
            "/run/machina/vm/qmp/extra.qmp.socket",
            "/run/other.sock"
        ]
    );
}

#[test]
fn plan_grants_and_vfio() {
    let mut h = host();
    h["mediated-device"] = json!({"b": {"address": "0000:c2:00.0", "classes": {"vgpu": {"name": "GRID", "placements": [0, 2]}}}, "a": {"address": "0000:c1:00.0", "heterogeneous": true, "classes": {"vgpu": {"name": "GRID"}}}});
    let m = build(h, json!({"attrs": {"memory": {"ram": 1024}, "firmware": {"code": {"name": "code", "storage": "fw"}, "vars": {"name": "efi", "storage": "vars"}}},
                            "volumes": [{"name": "os", "storage": "raw"}, {"name": "cd", "storage": "ahci"}],
                            "devices": [{"name": "g", "class": "vgpu"}]})).unwrap();
    let hw = machina::qemu::build(&m).unwrap();
    let plan = machina::plan::plan_for(&m, hw.clone(), 70000, Path::new("/sys"));
    let g: Vec<(String, machina::plan::Access, bool)> = plan
        .grants
        .iter()
        .map(|g| (g.path.display().to_string(), g.access, g.shared))
        .collect();
    use machina::plan::Access::*;
    assert_eq!(
        g,
        [
            ("/fw/code.fd".into(), ReadOnly, true),
            ("/vm/vm-efi.fd".into(), ReadWrite, false),
            ("/vm/os.raw".into(), ReadWrite, false),
            ("/iso/cd.iso".into(), ReadOnly, true)
        ]
    );
    assert_eq!(
        plan.mdevs[0]
            .parents
            .iter()
            .map(|p| p.address.as_str())
            .collect::<Vec<_>>(),
        ["0000:c1:00.0", "0000:c2:00.0"]
    );
    assert_eq!(plan.needs.memlock, Some((1024 << 20) + (1 << 30)));
    assert!(opts(&hw.argv(), "device")
        .iter()
        .any(|d| d.starts_with("vfio-pci,id=vfio.0,")
            && d.ends_with(&format!(
                "sysfsdev=/sys/bus/mdev/devices/{}",
                plan.mdevs[0].uuid
            ))));
    let back = machina::plan::Plan::from_json(&plan.to_json()).unwrap();
    assert_eq!(back, plan);
}

/// The hardware states its host needs once, next to the options that cause
/// them: the accelerator, TCP listeners with their addresses, device nodes.
#[test]
fn hardware_states_its_host_needs() {
    use machina::config::schema::Accelerator;
    use machina::plan::{DeviceNode, Listener, Service};
    let bare = build(host(), json!({"attrs": {"memory": {"ram": 64}}})).unwrap();
    let n = machina::qemu::build(&bare).unwrap().needs;
    assert_eq!(n.accelerator, Accelerator::Kvm);
    assert_eq!(n.devices, [DeviceNode::Kvm]);
    assert!(n.listeners.is_empty() && n.memlock.is_none());

    let m = build(
        host(),
        json!({"attrs": {"memory": {"ram": 64}, "spice": {"enabled": true, "port": 5999}},
               "connections": [{"name": "0", "network": "lan"}]}),
    )
    .unwrap();
    let hw = machina::qemu::build(&m).unwrap();
    assert_eq!(
        hw.needs.listeners,
        [Listener {
            service: Service::Spice,
            address: "127.0.0.1".parse().unwrap(),
            port: 5999
        }]
    );
    // The listener and the option QEMU gets agree.
    assert!(opts(&hw.argv(), "spice")[0].starts_with("port=5999,addr=127.0.0.1,"));
    assert!(hw.needs.devices.contains(&DeviceNode::Tun));
    assert!(hw.needs.loopback_only());
}

/// `attrs.limits` set in host tags reach the plan (and so the unit), sized
/// from the guest's RAM; bad values are refused, each on its own line.
#[test]
fn resource_limits_from_tags() {
    let mut h = host();
    h["tag"] = json!({
        "capped": {"attrs": {"limits": {"memory": {"max": true, "margin": 256}, "cpu": {"weight": 50}}}},
        "pinned": {"attrs": {"limits": {"memory": {"high": true}, "cpu": {"allowed": "0-1", "weight": 900}}}}
    });
    let m = build(
        h.clone(),
        json!({"tags": ["capped", "pinned"], "attrs": {"memory": {"ram": 1024}}}),
    )
    .unwrap();
    let l = &m.limits;
    assert_eq!(l.memory_max, Some((1024 + 256) << 20));
    assert_eq!(l.memory_high, Some((1024 + 256) << 20));
    assert_eq!(l.cpu_weight, Some(50), "the first tag that sets it wins");
    assert_eq!(l.allowed_cpus.as_deref(), Some("0-1"));
    let hw = machina::qemu::build(&m).unwrap();
    let plan = machina::plan::plan_for(&m, hw, 70001, Path::new("/sys"));
    let unit =
        machina::systemd::unit::render(&plan, &machina::systemd::unit::UnitOptions::new(&plan))
            .unwrap();
    for want in [
        "MemoryMax=1342177280",
        "MemoryHigh=1342177280",
        "CPUWeight=50",
        "AllowedCPUs=0-1",
        "TasksMax=4096",
        "LimitNOFILE=16384",
    ] {
        assert!(unit.lines().any(|l| l == want), "{want} in\n{unit}");
    }
    // No limits: the unit says nothing about memory or CPU.
    let m = build(h.clone(), json!({"attrs": {"memory": {"ram": 64}}})).unwrap();
    assert!(m.limits.is_empty());

    let e = build(
        h,
        json!({"attrs": {"memory": {"ram": 64}, "limits": {"cpu": {"weight": 20000, "allowed": "0-3\nx"}}}}),
    )
    .unwrap_err();
    assert!(
        e.contains("attrs.limits.cpu.weight") && e.contains("1–10000"),
        "{e}"
    );
    assert!(
        e.contains("attrs.limits.cpu.allowed") && e.contains("CPU list"),
        "{e}"
    );
}

/// `attrs.console` from a tag adds exactly a chardev on the runtime
/// directory's socket with its log, and an ISA serial port: every other
/// option, PCI addresses included, is what the VM has without it.
#[test]
fn console_from_a_tag_adds_only_its_chardev_and_serial_port() {
    let mut h = host();
    h["tag"] = json!({"console": {"attrs": {"console": {"enabled": true}}}});
    let base = json!({"attrs": {"memory": {"ram": 512}},
                      "volumes": [{"name": "os", "storage": "raw"}]});
    let without = args(h.clone(), base.clone());
    let mut tagged = base;
    tagged["tags"] = json!(["console"]);
    let with = args(h, tagged);
    let chardev = "socket,id=console,path=/run/machina/vm/console.sock,server=on,wait=off,logfile=/run/machina/vm/console.log,logappend=on";
    let serial = "isa-serial,id=serial.0,chardev=console";
    assert!(opts(&with, "chardev").contains(&chardev.to_owned()));
    assert!(opts(&with, "device").contains(&serial.to_owned()));
    let mut stripped = with.clone();
    for value in [chardev, serial] {
        let i = stripped.iter().position(|a| a == value).unwrap();
        stripped.drain(i - 1..=i);
    }
    assert_eq!(stripped, without);
    assert!(!without.iter().any(|a| a.contains("console")));
}

/// A VM with a TCP listener (guest agent, spice) keeps the host network;
/// any other is planned into a network namespace of its own.
#[test]
fn network_isolation_follows_tcp_listeners() {
    let plan_of = |attrs: Value| {
        let m = build(host(), json!({"attrs": attrs})).unwrap();
        let hw = machina::qemu::build(&m).unwrap();
        (
            hw.needs
                .listeners
                .iter()
                .map(|l| std::net::SocketAddr::new(l.address, l.port))
                .collect::<Vec<_>>(),
            machina::plan::plan_for(&m, hw, 70000, Path::new("/sys")).network_isolation,
        )
    };
    assert_eq!(plan_of(json!({"memory": {"ram": 512}})), (vec![], true));
    let (l, iso) = plan_of(
        json!({"memory": {"ram": 512}, "agent": {"qemu": {"enabled": true, "port": 4000}}}),
    );
    assert_eq!((l, iso), (vec!["127.0.0.1:4000".parse().unwrap()], false));
    let (l, iso) =
        plan_of(json!({"memory": {"ram": 512}, "spice": {"enabled": true, "port": 5901}}));
    assert_eq!((l, iso), (vec!["127.0.0.1:5901".parse().unwrap()], false));
    // The flag follows the needs: a plan that isolates a QEMU with a TCP
    // listener is refused.
    let m = build(
        host(),
        json!({"attrs": {"memory": {"ram": 512}, "spice": {"enabled": true, "port": 5901}}}),
    )
    .unwrap();
    let mut plan = machina::plan::plan_for(
        &m,
        machina::qemu::build(&m).unwrap(),
        70000,
        Path::new("/sys"),
    );
    plan.check().unwrap();
    plan.network_isolation = true;
    let e = plan.check().unwrap_err().to_string();
    assert!(e.contains("network isolation"), "{e}");
}
