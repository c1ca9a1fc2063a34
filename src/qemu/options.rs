//! QEMU command-line options and their rendering.
//!
//! An option is a type (`-device`) and a comma-separated parameter list.
//! Parameter names are fixed by this program; values come from configuration
//! and are escaped the way QEMU's option parser expects: a literal comma is
//! written twice. (The Go program left values raw, so a comma in a serial or
//! a file name injected extra properties.)

/// A value a parameter can take, written (escaped) straight into the
/// option's text: building the hardware of 10,000 machines allocates no
/// string per value.
pub trait ParamValue {
    /// Appends the value to `out`, each comma doubled.
    fn push_to(self, out: &mut String);
}

impl ParamValue for &str {
    fn push_to(self, out: &mut String) {
        push_escaped(out, self);
    }
}

impl ParamValue for String {
    fn push_to(self, out: &mut String) {
        push_escaped(out, &self);
    }
}

impl ParamValue for &String {
    fn push_to(self, out: &mut String) {
        push_escaped(out, self);
    }
}

impl ParamValue for &std::path::Path {
    fn push_to(self, out: &mut String) {
        // What `Path::display` shows, without the formatting machinery and
        // its byte-at-a-time lossy decoding (a path or two per device).
        match self.to_str() {
            Some(s) => push_escaped(out, s),
            None => push_escaped(out, &self.to_string_lossy()),
        }
    }
}

impl ParamValue for &std::path::PathBuf {
    fn push_to(self, out: &mut String) {
        self.as_path().push_to(out);
    }
}

impl ParamValue for crate::identity::Wwn {
    fn push_to(self, out: &mut String) {
        push_escaped(out, &self.to_string());
    }
}

macro_rules! unsigned_value {
    ($($t:ty),*) => {$(
        impl ParamValue for $t {
            fn push_to(self, out: &mut String) {
                push_digits(out, self as u64);
            }
        }
    )*};
}
unsigned_value!(u16, u32, u64, usize);

impl ParamValue for i32 {
    fn push_to(self, out: &mut String) {
        if self < 0 {
            out.push('-');
        }
        push_digits(out, u64::from(self.unsigned_abs()));
    }
}

/// A QEMU option: `-<kind> <p1>,<p2>,…`. The parameters are rendered as
/// they are added (a parameter is never looked at again), so the text
/// `machina args` prints and the argv of the plan are copies of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    /// The option type without the dash.
    pub kind: &'static str,
    /// The parameters so far, comma-separated, values escaped.
    params: String,
    /// Whether there is any parameter (one may render as empty text).
    has_params: bool,
}

impl Opt {
    /// An option with no parameters.
    pub fn flag(kind: &'static str) -> Opt {
        Opt {
            kind,
            params: String::new(),
            has_params: false,
        }
    }

    /// An option with parameters.
    pub fn new(kind: &'static str) -> Opt {
        Opt {
            kind,
            // Most options' parameters fit: no regrowth per push.
            params: String::with_capacity(128),
            has_params: false,
        }
    }

    /// Starts the next parameter: a comma after the previous one.
    #[inline]
    fn next(&mut self) -> &mut String {
        if std::mem::replace(&mut self.has_params, true) {
            self.params.push(',');
        }
        &mut self.params
    }

    /// Appends a bare word (fixed by this program: not escaped).
    #[inline]
    pub fn word(mut self, w: &'static str) -> Opt {
        self.next().push_str(w);
        self
    }

    /// Appends a value-only parameter.
    #[inline]
    pub fn value(mut self, v: impl ParamValue) -> Opt {
        v.push_to(self.next());
        self
    }

    /// Appends `name=value`.
    #[inline]
    pub fn named(mut self, name: &'static str, v: impl ParamValue) -> Opt {
        let out = self.next();
        out.push_str(name);
        out.push('=');
        v.push_to(out);
        self
    }

    /// Appends `name=value` when `v` is `Some`.
    #[inline]
    pub fn named_opt(self, name: &'static str, v: Option<impl ParamValue>) -> Opt {
        match v {
            Some(v) => self.named(name, v),
            None => self,
        }
    }

    /// Inserts `name=value` as the second parameter (after the first).
    pub fn named_second(mut self, name: &'static str, v: &'static str) -> Opt {
        // The first separator: a single comma (a doubled one is escaped).
        let b = self.params.as_bytes();
        let mut i = 0;
        while i < b.len() && b[i] != b',' {
            i += 1;
        }
        while i + 1 < b.len() && b[i + 1] == b',' {
            i += 2;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
        }
        let first_end = i.min(b.len());
        if self.has_params {
            self.params
                .insert_str(first_end, &[",", name, "=", v].concat());
        } else {
            self = self.named(name, v);
        }
        self
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
        self.has_params.then(|| self.params.clone())
    }
}

/// Appends `n` in decimal.
fn push_digits(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `<prefix><n>`: a QEMU id such as `net.0`, without the formatting
/// machinery (a VM has dozens of ids, a host thousands of VMs).
pub fn numbered(prefix: &str, n: u64) -> String {
    numbered_parts(&[prefix], n)
}

/// [`numbered`] with a prefix in parts (`["pcie", "."]`), joined in the
/// one allocation.
pub fn numbered_parts(prefix: &[&str], n: u64) -> String {
    let mut s = String::with_capacity(prefix.iter().map(|p| p.len()).sum::<usize>() + 20);
    prefix.iter().for_each(|p| s.push_str(p));
    push_digits(&mut s, n);
    s
}

/// Doubles every comma, QEMU's escape for a literal comma in a value.
#[inline]
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
        if o.has_params {
            line.push(' ');
            // Quoted (rare) only when it needs to be.
            line.push_str(&shell_quote(&o.params));
        }
    }
    line
}

/// Renders options as an argv (after `argv[0]`).
pub fn to_argv(opts: &[Opt]) -> Vec<String> {
    into_argv(opts.to_vec())
}

/// [`to_argv`] that moves each option's parameter string into the argv
/// (a plan per VM: no copy of each).
pub fn into_argv(opts: Vec<Opt>) -> Vec<String> {
    let mut argv = Vec::with_capacity(opts.len() * 2);
    for o in opts {
        argv.push(o.dash_kind());
        if o.has_params {
            argv.push(o.params);
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

/// Whether byte `c` needs no shell quoting: ASCII letters and digits and
/// `-_=,./:@%+`. As ranges: `+` to `:` (`+,-./`, digits, `:`), `@` to `Z`,
/// `a` to `z`, and `=`, `_`, `%` (comparisons only, which vectorize).
fn shell_safe_byte(c: u8) -> bool {
    (c.wrapping_sub(b'+') <= b':' - b'+')
        | (c.wrapping_sub(b'@') <= b'Z' - b'@')
        | (c.wrapping_sub(b'a') <= b'z' - b'a')
        | (c == b'=')
        | (c == b'_')
        | (c == b'%')
}

/// Whether `s` can be printed unquoted (this runs over every byte of every
/// argv `machina args` prints).
fn is_shell_safe(s: &[u8]) -> bool {
    !s.is_empty() && crate::bytes::all_in_class(s, b'a', shell_safe_byte)
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
        // An empty value is still a parameter (an empty argument).
        assert_eq!(Opt::new("x").value("").param_string().as_deref(), Some(""));
        assert_eq!(
            Opt::new("x")
                .value("")
                .named("a", 1u32)
                .param_string()
                .unwrap(),
            ",a=1"
        );
        assert_eq!(Opt::new("x").param_string(), None);
        assert_eq!(
            Opt::new("fd")
                .named("fd", -3)
                .named("n", u64::MAX)
                .param_string()
                .unwrap(),
            format!("fd=-3,n={}", u64::MAX)
        );
    }

    #[test]
    fn a_second_parameter_is_inserted_after_the_first() {
        let m = Opt::new("machine")
            .named("type", "q35")
            .named("pflash0", "a,b")
            .named_second("vmport", "off");
        assert_eq!(
            m.param_string().unwrap(),
            "type=q35,vmport=off,pflash0=a,,b"
        );
        let only = Opt::new("machine")
            .named("type", "q35")
            .named_second("vmport", "off");
        assert_eq!(only.param_string().unwrap(), "type=q35,vmport=off");
        assert_eq!(
            options_line(&[only, Opt::flag("S")]),
            "-machine type=q35,vmport=off -S"
        );
    }

    #[test]
    fn shell_safe_bytes_are_letters_digits_and_a_few_marks() {
        for c in 0..=255u8 {
            let want = c.is_ascii_alphanumeric() || b"-_=,./:@%+".contains(&c);
            assert_eq!(shell_safe_byte(c), want, "{c:#x}");
            let s = [b'a', c, b'b'].repeat(7);
            assert_eq!(is_shell_safe(&s), want, "{c:#x} in a long string");
        }
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
