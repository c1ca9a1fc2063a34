//! Files the distribution packages ship that are generated from this
//! crate's own definitions, so nothing is written twice: man pages from the
//! clap commands (`clap_mangen`) and from the configuration schema (the one
//! `machina schema` prints), and the shell completion scripts.
//!
//! `machina package-files DIR` (hidden) writes them; `scripts/package` runs
//! it before building the packages.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use clap::{Arg, ArgAction, Command};
use clap_mangen::Man;
use serde_json::Value;

use super::complete;
use crate::config::{self, schema};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Writes `DIR/man/*.{1,5,8}` and `DIR/completions/{bash,zsh,fish}/…`, the
/// completion scripts calling the `machina` installed in `bin_dir`.
pub fn write_package_files(dir: &Path, bin_dir: &Path) -> io::Result<()> {
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    for (name, text) in man_pages()? {
        std::fs::write(man.join(name), text)?;
    }
    let bin = bin_dir.join("machina");
    let bin = bin
        .to_str()
        .ok_or_else(|| io::Error::other("--bin-dir is not UTF-8"))?;
    for (shell, file) in complete::SHELLS {
        let d = dir.join("completions").join(shell);
        std::fs::create_dir_all(&d)?;
        let script = complete::registration(shell, bin).expect("a known shell");
        std::fs::write(d.join(file), script)?;
    }
    Ok(())
}

/// Every man page: (file name, roff text).
pub fn man_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut pages = Vec::new();
    let mut cmd = complete::command().version(VERSION);
    cmd.build();
    let mut main = Vec::new();
    Man::new(cmd.clone()).render(&mut main)?;
    main.extend_from_slice(see_also(&["machina-launch(8)", "machina.conf.json(5)"]).as_bytes());
    pages.push(("machina.1".to_owned(), main));
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("machina-{}", sub.get_name());
        let sub = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("machina {}", sub.get_name()))
            .version(VERSION);
        let mut text = Vec::new();
        Man::new(sub).render(&mut text)?;
        text.extend_from_slice(see_also(&["machina(1)"]).as_bytes());
        pages.push((format!("{name}.1"), text));
    }
    let mut launch = Vec::new();
    Man::new(launch_command())
        .section("8")
        .render(&mut launch)?;
    launch.extend_from_slice(
        see_also(&["machina(1)", "machina.conf.json(5)", "systemd.exec(5)"]).as_bytes(),
    );
    pages.push(("machina-launch.8".to_owned(), launch));
    pages.push(("machina.conf.json.5".to_owned(), config_page().into_bytes()));
    Ok(pages)
}

fn see_also(pages: &[&str]) -> String {
    let refs: Vec<String> = pages
        .iter()
        .map(|p| {
            let (name, section) = p.split_once('(').expect("name(section)");
            format!("\\fB{}\\fR({}", name.replace('-', "\\-"), section)
        })
        .collect();
    format!(".SH \"SEE ALSO\"\n{}\n", refs.join(", "))
}

/// `machina-launch`'s command line for its man page. The launcher parses
/// its two forms by hand (it links no clap, to stay small as root).
fn launch_command() -> Command {
    Command::new("machina-launch")
        .version(VERSION)
        .about("Prepares the host for one virtual machine, drops to the VM's uid and execs QEMU")
        .long_about(
            "machina-launch is what a VM's systemd unit (machina-qemu-VM.service, written by \
             `machina gen`) starts. As root, briefly, it reads the VM's launch plan (root-owned, \
             not writable by others), locks the VM, creates /run/machina/VM, opens its TAP \
             devices on their bridges, creates mediated devices, gives the VM's group access to \
             its disks, then sets the VM's uid and gid, empties every capability set, sets \
             no_new_privs and execs QEMU under its seccomp sandbox. Any failure undoes every \
             step before it and prints one line naming the VM, the step and the cause.\n\n\
             /dev/kvm and /dev/vhost-net are reached through the group that owns them: Debian's \
             and Fedora's udev give both to group kvm, mode 0660.",
        )
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(
            Arg::new("vm")
                .value_name("VM")
                .help("Launch the VM whose plan is /etc/machina/launch/VM.json"),
        )
        .arg(
            Arg::new("plan")
                .long("plan")
                .value_name("FILE")
                .action(ArgAction::Set)
                .conflicts_with("vm")
                .help("Launch from this plan file instead"),
        )
        .after_help(
            "Exit status: QEMU's own once it runs (the process becomes QEMU); 1 when a step \
             before it failed, with the host left as it was; 2 usage error.",
        )
}

/// machina.conf.json(5): both files' keys, from the schema `machina
/// schema` prints.
fn config_page() -> String {
    let host = serde_json::to_value(schemars::schema_for!(schema::HostFile)).expect("schema");
    let machine = serde_json::to_value(schemars::schema_for!(schema::MachineFile)).expect("schema");
    let mut s = String::new();
    let _ = writeln!(
        s,
        ".TH MACHINA.CONF.JSON 5 \"\" \"machina {VERSION}\" \"File Formats\""
    );
    s.push_str(".SH NAME\nmachina.conf.json \\- machina host and machine configuration files\n");
    let _ = writeln!(
        s,
        ".SH SYNOPSIS\n\\fI{dir}/{host}\\fR\n.br\n\\fI{dir}/{mdir}/\\fRNAME\\fI{suffix}\\fR",
        dir = esc(config::DEFAULT_CONFIG_DIR),
        host = esc(config::HOST_FILE),
        mdir = esc(config::MACHINE_DIR),
        suffix = esc(config::MACHINE_SUFFIX),
    );
    s.push_str(
        ".SH DESCRIPTION\n\
         \\fBmachina\\fR(1) reads one host file and one file per virtual machine, in JSON. \
         Keys not listed here are errors naming the file, the JSON path and the nearest \
         known key. Values in patterns may use ${var} expansion. \
         \\fBmachina schema host\\fR and \\fBmachina schema machine\\fR print the same \
         definitions as JSON Schema, for editors.\n\
         .PP\nThe configuration directory is \\fI/etc/machina\\fR, or \\fB\\-\\-config\\-dir\\fR, \
         or \\fB$MACHINA_CONFIG_DIR\\fR. \\fBmachina gen\\fR writes launch plans to \
         \\fI/etc/machina/launch/\\fR; the package never overwrites files in either directory.\n",
    );
    s.push_str(".SH \"HOST FILE\"\n");
    keys(&mut s, &host);
    s.push_str(".SH \"MACHINE FILE\"\n");
    keys(&mut s, &machine);
    s.push_str(&see_also(&["machina(1)", "machina-launch(8)"]));
    s
}

/// One `.TP` entry per key, depth first, with JSON paths.
fn keys(out: &mut String, root: &Value) {
    let defs = root.get("$defs").cloned().unwrap_or(Value::Null);
    let mut seen = Vec::new();
    walk(out, &defs, root, "", &mut seen);
}

fn resolve<'a>(defs: &'a Value, node: &'a Value) -> (&'a Value, Option<String>) {
    let mut node = node;
    let mut name = None;
    for _ in 0..8 {
        if let Some(r) = node.get("$ref").and_then(Value::as_str) {
            let n = r.trim_start_matches("#/$defs/");
            name = Some(n.to_owned());
            match defs.get(n) {
                Some(d) => node = d,
                None => break,
            }
        } else if let Some(alt) = node
            .get("anyOf")
            .or_else(|| node.get("oneOf"))
            .and_then(Value::as_array)
            .filter(|alts| {
                alts.iter()
                    .all(|a| a.get("enum").is_none() && a.get("const").is_none())
            })
        {
            match alt
                .iter()
                .find(|a| a.get("type") != Some(&Value::from("null")))
            {
                Some(a) => node = a,
                None => break,
            }
        } else {
            break;
        }
    }
    (node, name)
}

fn type_name(node: &Value) -> String {
    if let Some(values) = enum_values(node) {
        return format!("one of {}", values.join(", "));
    }
    match node.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "value".to_owned(),
    }
}

fn enum_values(node: &Value) -> Option<Vec<String>> {
    if let Some(vals) = node.get("enum").and_then(Value::as_array) {
        return Some(
            vals.iter()
                .filter(|v| !v.is_null())
                .map(|v| v.to_string())
                .collect(),
        );
    }
    let alts = node
        .get("oneOf")
        .or_else(|| node.get("anyOf"))?
        .as_array()?;
    let vals: Vec<String> = alts
        .iter()
        .filter_map(|a| {
            a.get("const")
                .or_else(|| a.get("enum").and_then(|e| e.get(0)))
                .map(|v| v.to_string())
        })
        .collect();
    (vals.len() == alts.len() && !vals.is_empty()).then_some(vals)
}

fn walk(out: &mut String, defs: &Value, node: &Value, path: &str, seen: &mut Vec<String>) {
    let (node, def) = resolve(defs, node);
    // A type that contains itself is listed once.
    if let Some(d) = &def {
        if seen.contains(d) {
            return;
        }
        seen.push(d.clone());
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (key, sub) in props {
            let p = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let (target, _) = resolve(defs, sub);
            let desc = sub
                .get("description")
                .or_else(|| target.get("description"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let _ = writeln!(
                out,
                ".TP\n\\fB{}\\fR (\\fI{}\\fR)\n{}",
                esc(&p),
                esc(&type_name(target)),
                esc(&plain(desc))
            );
            walk(out, defs, sub, &p, seen);
        }
    } else if let Some(items) = node.get("items") {
        walk(out, defs, items, &format!("{path}[]"), seen);
    } else if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(out, defs, values, &format!("{path}.NAME"), seen);
    }
    if def.is_some() {
        seen.pop();
    }
}

/// Doc-comment text for roff: no Markdown backticks.
fn plain(s: &str) -> String {
    s.replace('`', "")
}

/// Escapes text for roff: backslashes, hyphens, and a leading dot or quote.
fn esc(s: &str) -> String {
    let t = s.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_page_lists_keys_of_both_files() {
        let page = config_page();
        for key in [
            "attrs.memory.ram",
            "volumes[].name",
            "connections[].network",
        ] {
            assert!(page.contains(&esc(key)), "{key} missing");
        }
        assert!(page.contains("HOST FILE") && page.contains("MACHINE FILE"));
    }

    #[test]
    fn a_page_per_visible_subcommand() {
        let pages = man_pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for n in [
            "machina.1",
            "machina-start.1",
            "machina-launch.8",
            "machina.conf.json.5",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert!(!names
            .iter()
            .any(|n| n.contains("package-files") || *n == "machina-help.1"));
    }
}
