//! QEMU command-line options and their rendering.
//!
//! An option is a type (`-device`) and a comma-separated parameter list.
//! Parameter names are fixed by this program; values come from configuration
//! and are escaped the way QEMU's option parser expects: a literal comma is
//! written twice. (The Go program left values raw, so a comma in a serial or
//! a file name injected extra properties.)

use std::borrow::Cow;

/// One parameter of an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// A fixed bare word (`tap`, `socket`, `on`-style flags, the first
    /// positional of `-cpu`).
    Word(&'static str),
    /// A value-only parameter taken from data (`-name <x>`, `-cpu <model>`).
    Value(Cow<'static, str>),
    /// `name=value`.
    Named(&'static str, Cow<'static, str>),
}

/// A value a parameter can take. Fixed strings are borrowed, so building
/// the hardware of 10,000 machines allocates only for data.
pub trait ParamValue {
    /// The value as text.
    fn into_value(self) -> Cow<'static, str>;
}

impl ParamValue for &'static str {
    fn into_value(self) -> Cow<'static, str> {
        Cow::Borrowed(self)
    }
}

impl ParamValue for String {
    fn into_value(self) -> Cow<'static, str> {
        Cow::Owned(self)
    }
}

impl ParamValue for &String {
    fn into_value(self) -> Cow<'static, str> {
        Cow::Owned(self.clone())
    }
}

impl ParamValue for &std::path::Path {
    fn into_value(self) -> Cow<'static, str> {
        // What `Path::display` shows, without the formatting machinery and
        // its byte-at-a-time lossy decoding (a path or two per device).
        Cow::Owned(match self.to_str() {
            Some(s) => s.to_owned(),
            None => self.to_string_lossy().into_owned(),
        })
    }
}

impl ParamValue for &std::path::PathBuf {
    fn into_value(self) -> Cow<'static, str> {
        self.as_path().into_value()
    }
}

impl ParamValue for crate::identity::Wwn {
    fn into_value(self) -> Cow<'static, str> {
        Cow::Owned(self.to_string())
    }
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl ParamValue for $t {
            fn into_value(self) -> Cow<'static, str> {
                Cow::Owned(self.to_string())
            }
        }
    )*};
}
int_value!(u16, u32, u64, usize, i32);

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
        Opt {
            kind,
            // Most options have a few parameters: no regrowth per push.
            params: Vec::with_capacity(8),
        }
    }

    /// Appends a bare word.
    pub fn word(mut self, w: &'static str) -> Opt {
        self.params.push(Param::Word(w));
        self
    }

    /// Appends a value-only parameter.
    pub fn value(mut self, v: impl ParamValue) -> Opt {
        self.params.push(Param::Value(v.into_value()));
        self
    }

    /// Appends `name=value`.
    pub fn named(mut self, name: &'static str, v: impl ParamValue) -> Opt {
        self.params.push(Param::Named(name, v.into_value()));
        self
    }

    /// Appends `name=value` when `v` is `Some`.
    pub fn named_opt(self, name: &'static str, v: Option<impl ParamValue>) -> Opt {
        match v {
            Some(v) => self.named(name, v),
            None => self,
        }
    }

    /// The `-kind` argument.
    pub fn dash_kind(&self) -> String {
        let mut s = String::with_capacity(self.kind.len() + 1);
        s.push('-');
        s.push_str(self.kind);
        s
    }

    /// The parameter string, or `None` when there are no parameters.
    pub fn param_string(&self) -> Option<String> {
        if self.params.is_empty() {
            return None;
        }
        let mut s = String::new();
        self.write_params(&mut s);
        Some(s)
    }

    /// Appends the parameter string to `s`.
    fn write_params(&self, s: &mut String) {
        let len: usize = self
            .params
            .iter()
            .map(|p| match p {
                Param::Word(w) => w.len() + 1,
                Param::Value(v) => v.len() + 1,
                Param::Named(n, v) => n.len() + v.len() + 2,
            })
            .sum();
        s.reserve(len);
        for (i, p) in self.params.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            match p {
                Param::Word(w) => s.push_str(w),
                Param::Value(v) => push_escaped(s, v),
                Param::Named(n, v) => {
                    s.push_str(n);
                    s.push('=');
                    push_escaped(s, v);
                }
            }
        }
    }
}

/// `<prefix><n>`: a QEMU id such as `net.0`, without the formatting
/// machinery (a VM has dozens of ids, a host thousands of VMs).
pub fn numbered(prefix: &str, n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut s = String::with_capacity(prefix.len() + digits.len() - i);
    s.push_str(prefix);
    s.extend(digits[i..].iter().map(|&d| char::from(d)));
    s
}

/// Doubles every comma, QEMU's escape for a literal comma in a value.
fn push_escaped(out: &mut String, v: &str) {
    if !v.as_bytes().contains(&b',') {
        out.push_str(v);
        return;
    }
    for (i, part) in v.split(',').enumerate() {
        if i > 0 {
            out.push_str(",,");
        }
        out.push_str(part);
    }
}

/// Renders options as the one line `machina args` prints (see
/// [`argv_line`]), without building the argv first.
pub fn options_line(opts: &[Opt]) -> String {
    // About 70 bytes an option: one allocation for a typical VM.
    let mut line = String::with_capacity(opts.len() * 80);
    for (i, o) in opts.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push('-');
        line.push_str(o.kind);
        if !o.params.is_empty() {
            line.push(' ');
            // Written in place; quoted (rare) only when it needs to be.
            let start = line.len();
            o.write_params(&mut line);
            if !is_shell_safe(&line.as_bytes()[start..]) {
                let quoted = shell_quote(&line[start..]).into_owned();
                line.truncate(start);
                line.push_str(&quoted);
            }
        }
    }
    line
}

/// Renders options as an argv (after `argv[0]`).
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
    let mut line = String::with_capacity(argv.iter().map(|a| a.len() + 1).sum());
    for (i, a) in argv.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(&shell_quote(a));
    }
    line
}

/// Whether byte `c` needs no shell quoting.
fn shell_safe_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'_' | b'=' | b',' | b'.' | b'/' | b':' | b'@' | b'%' | b'+'
        )
}

/// Whether `s` can be printed unquoted. This runs over every byte of every
/// argv `machina args` prints: a fold without early exit over comparisons
/// (no table lookup) lets the compiler vectorize it.
fn is_shell_safe(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().fold(true, |ok, &b| ok & shell_safe_byte(b))
}

/// Quotes `s` for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> std::borrow::Cow<'_, str> {
    if is_shell_safe(s.as_bytes()) {
        s.into()
    } else {
        format!("'{}'", s.replace('\'', r"'\''")).into()
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
