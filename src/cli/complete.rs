//! Shell completion: clap_complete's dynamic completion, which asks the
//! installed `machina` for candidates at each Tab, so subcommands, options
//! and VM names (read from the configuration directory) are always current.
//!
//! The registration scripts are `complete -F` functions (bash), which keep
//! working behind `sudo` with bash-completion's `_command_offset`, unlike a
//! `complete -C` completer.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};
use clap_complete::env::{Bash, EnvCompleter, Fish, Zsh};

use super::Cli;
use crate::config::{self, ConfigDir};

/// The environment variable that switches `machina` into completion mode.
pub const COMPLETE_VAR: &str = "MACHINA_COMPLETE";

/// Arguments that name configured machines.
const MACHINE_ARGS: [&str; 2] = ["machines", "machine"];

/// The `machina` clap command, with VM-name completion on every argument
/// that takes machine names (for completion, man pages and tests).
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    let subs: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| {
            s.get_arguments()
                .any(|a| MACHINE_ARGS.contains(&a.get_id().as_str()))
        })
        .map(|s| s.get_name().to_owned())
        .collect();
    for sub in subs {
        cmd = cmd.mut_subcommand(sub, |mut s| {
            for id in MACHINE_ARGS {
                if s.get_arguments().any(|a| a.get_id() == id) {
                    s = s.mut_arg(id, |a| a.add(ArgValueCompleter::new(machine_candidates)));
                }
            }
            s
        });
    }
    cmd
}

/// Answers a completion request (`MACHINA_COMPLETE=<shell> machina -- …`)
/// and exits; returns at once on a normal run.
pub fn complete_if_asked() {
    clap_complete::CompleteEnv::with_factory(command)
        .var(COMPLETE_VAR)
        .complete();
}

/// The shells a registration script is written for, with its file name
/// under the package's completion directories.
pub const SHELLS: [(&str, &str); 3] = [
    ("bash", "machina"),
    ("zsh", "_machina"),
    ("fish", "machina.fish"),
];

/// The registration script for `shell` calling the `machina` at `bin`.
pub fn registration(shell: &str, bin: &str) -> Option<Vec<u8>> {
    let shell: &dyn EnvCompleter = match shell {
        "bash" => &Bash,
        "zsh" => &Zsh,
        "fish" => &Fish,
        _ => return None,
    };
    let mut buf = Vec::new();
    shell
        .write_registration(COMPLETE_VAR, "machina", "machina", bin, &mut buf)
        .expect("writing to a Vec does not fail");
    if shell.name() == "zsh" {
        // Installed in $fpath, the file is autoloaded as `_machina` at the
        // first Tab: complete then too, not only from the second Tab on.
        buf.extend_from_slice(
            b"if [ \"$funcstack[1]\" = \"_machina\" ]; then\n    _clap_dynamic_completer_machina \"$@\"\nfi\n",
        );
    }
    Some(buf)
}

/// The VM names in the configuration directory the command line being
/// completed names (`--config-dir`), else `$MACHINA_CONFIG_DIR`, else
/// `/etc/machina`. Unreadable directories complete nothing.
fn machine_candidates(current: &OsStr) -> Vec<CompletionCandidate> {
    let dir = config_dir_from(std::env::args_os().skip_while(|a| a != "--").skip(1));
    let Some(prefix) = current.to_str() else {
        return Vec::new();
    };
    let mut names = ConfigDir::new(dir).list_machines().unwrap_or_default();
    names.retain(|n| n.as_str().starts_with(prefix));
    let mut out: Vec<CompletionCandidate> = names
        .iter()
        .map(|n| CompletionCandidate::new(n.as_str()))
        .collect();
    if "system".starts_with(prefix) && is_cat() {
        out.push(CompletionCandidate::new("system").help(Some("the host file".into())));
    }
    out
}

/// Whether the command line being completed is `machina cat …`, the one
/// command that also takes `system`.
fn is_cat() -> bool {
    subcommand_of(std::env::args_os().skip_while(|a| a != "--").skip(2)).is_some_and(|a| a == "cat")
}

/// The first word that is neither an option nor a global option's value.
fn subcommand_of(mut args: impl Iterator<Item = OsString>) -> Option<OsString> {
    const VALUED: [&str; 3] = ["--config-dir", "--plan-dir", "--unit-dir"];
    while let Some(a) = args.next() {
        if VALUED.iter().any(|v| a == *v) {
            args.next();
        } else if !a.to_string_lossy().starts_with('-') {
            return Some(a);
        }
    }
    None
}

/// The configuration directory a command line names.
fn config_dir_from(args: impl Iterator<Item = OsString>) -> PathBuf {
    let mut found = None;
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        if a == "--config-dir" {
            found = args.next().map(PathBuf::from);
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config-dir=")) {
            found = Some(PathBuf::from(v));
        }
    }
    found
        .or_else(|| std::env::var_os("MACHINA_CONFIG_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_dir_comes_from_the_command_line() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>().into_iter();
        assert_eq!(
            config_dir_from(args(&["machina", "--config-dir", "/x", "start", ""])),
            PathBuf::from("/x")
        );
        assert_eq!(
            config_dir_from(args(&["machina", "start", "--config-dir=/y", ""])),
            PathBuf::from("/y")
        );
    }

    #[test]
    fn the_subcommand_is_found_after_global_options() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>().into_iter();
        assert_eq!(
            subcommand_of(args(&["--config-dir", "/x", "cat", "a"])),
            Some("cat".into())
        );
        assert_eq!(
            subcommand_of(args(&["--json", "list"])),
            Some("list".into())
        );
        assert_eq!(subcommand_of(args(&["--plan-dir"])), None);
    }

    #[test]
    fn every_machine_argument_completes_names() {
        let cmd = command();
        let with: Vec<&str> = cmd
            .get_subcommands()
            .filter(|s| {
                s.get_arguments()
                    .any(|a| a.get::<ArgValueCompleter>().is_some())
            })
            .map(|s| s.get_name())
            .collect();
        for name in ["start", "stop", "status", "cat", "run", "generate"] {
            assert!(with.contains(&name), "{name} lacks VM completion: {with:?}");
        }
    }

    #[test]
    fn bash_registration_is_a_function() {
        let s = String::from_utf8(registration("bash", "/usr/bin/machina").unwrap()).unwrap();
        assert!(s.contains("-F _clap_complete_machina machina"), "{s}");
        assert!(s.contains("\"/usr/bin/machina\" -- "), "{s}");
        assert!(!s.contains("complete -C"), "{s}");
    }
}
