//! QEMU command-line options and their rendering.
//!
//! An option is a type (`-device`) and a comma-separated parameter list.
//! Parameter names are fixed by this program; values come from configuration
//! and are escaped the way QEMU's option parser expects: a literal comma is
//! written twice. (The Go program left values raw, so a comma in a serial or
//! a file name injected extra properties.)

use std::fmt::Write as _;

/// One parameter of an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// A fixed bare word (`tap`, `socket`, `on`-style flags, the first
    /// positional of `-cpu`).
    Word(&'static str),
    /// A value-only parameter taken from data (`-name <x>`, `-cpu <model>`).
    Value(String),
    /// `name=value`.
    Named(&'static str, String),
}

/// A QEMU option: `-<kind> <p1>,<p2>,…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    /// The option type without the dash.
    pub kind: &'static str,
    /// Parameters, possibly none.
    pub params: Vec<Param>,
}

impl Opt {
    /// An option with no parameters.
    pub fn flag(kind: &'static str) -> Opt {
        Opt {
            kind,
            params: Vec::new(),
        }
    }

    /// An option with parameters.
    pub fn new(kind: &'static str) -> Opt {
        Opt::flag(kind)
    }

    /// Appends a bare word.
    pub fn word(mut self, w: &'static str) -> Opt {
        self.params.push(Param::Word(w));
        self
    }

    /// Appends a value-only parameter.
    pub fn value(mut self, v: impl Into<String>) -> Opt {
        self.params.push(Param::Value(v.into()));
        self
    }

    /// Appends `name=value`.
    pub fn named(mut self, name: &'static str, v: impl ToString) -> Opt {
        self.params.push(Param::Named(name, v.to_string()));
        self
    }

    /// Appends `name=value` when `v` is `Some`.
    pub fn named_opt(self, name: &'static str, v: Option<impl ToString>) -> Opt {
        match v {
            Some(v) => self.named(name, v),
            None => self,
        }
    }

    /// The `-kind` argument.
    pub fn dash_kind(&self) -> String {
        format!("-{}", self.kind)
    }

    /// The parameter string, or `None` when there are no parameters.
    pub fn param_string(&self) -> Option<String> {
        if self.params.is_empty() {
            return None;
        }
        let mut s = String::new();
        for (i, p) in self.params.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            match p {
                Param::Word(w) => s.push_str(w),
                Param::Value(v) => push_escaped(&mut s, v),
                Param::Named(n, v) => {
                    let _ = write!(s, "{n}=");
                    push_escaped(&mut s, v);
                }
            }
        }
        Some(s)
    }
}

/// Doubles every comma, QEMU's escape for a literal comma in a value.
fn push_escaped(out: &mut String, v: &str) {
    for c in v.chars() {
        if c == ',' {
            out.push(',');
        }
        out.push(c);
    }
}

/// Renders options as an argv (after argv[0]).
pub fn to_argv(opts: &[Opt]) -> Vec<String> {
    let mut argv = Vec::with_capacity(opts.len() * 2);
    for o in opts {
        argv.push(o.dash_kind());
        if let Some(p) = o.param_string() {
            argv.push(p);
        }
    }
    argv
}

/// Renders an argv as one line the way `machina args` prints it: arguments
/// separated by single spaces, each quoted for a POSIX shell only if it
/// holds a character outside a safe set (never the case for the Go
/// program's outputs, which it printed unquoted).
pub fn argv_line(argv: &[String]) -> String {
    let mut line = String::new();
    for (i, a) in argv.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(&shell_quote(a));
    }
    line
}

/// Quotes `s` for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=,./:@%+".contains(&b));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_commas_in_values_only() {
        let o = Opt::new("blockdev")
            .named("driver", "file")
            .named("filename", "/a,b/c")
            .value("x,y");
        assert_eq!(
            o.param_string().unwrap(),
            "driver=file,filename=/a,,b/c,x,,y"
        );
        assert_eq!(to_argv(&[Opt::flag("nodefaults")]), vec!["-nodefaults"]);
    }

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote("driver=file,node-name=a"),
            "driver=file,node-name=a"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
