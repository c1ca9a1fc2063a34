//! Finding where a JSON path is in a file's text, so that a problem found
//! after parsing (a pool that does not exist, a duplicate name) still gets
//! the `file:line:column` an editor jumps to.

/// The 1-based line and column of the value at `path` (`attrs.cpu.cores`,
/// `volumes[1].name`, the format of [`super::Origin`]) in JSON `text`; when
/// the value is absent, of its deepest present ancestor. `None` for an
/// empty path or text that is not JSON up to there.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    if path.is_empty() {
        return None;
    }
    let mut s = Scan {
        b: text.as_bytes(),
        i: 0,
        target: path,
        best: None,
    };
    let mut p = String::new();
    let _ = s.value(&mut p, 0);
    let (_, offset) = s.best?;
    let before = &text[..offset];
    let line = before.bytes().filter(|&c| c == b'\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    target: &'a str,
    /// Longest matched path length and the offset of its value.
    best: Option<(usize, usize)>,
}

/// Deeper nesting is not followed (the files are small and flat).
const MAX_DEPTH: usize = 64;

impl Scan<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn value(&mut self, path: &mut String, depth: usize) -> Option<()> {
        self.ws();
        let at = self.i;
        let t = self.target.as_bytes();
        let matches = path.is_empty()
            || (self.target.starts_with(path.as_str())
                && (t.len() == path.len() || matches!(t[path.len()], b'.' | b'[')));
        if matches && !path.is_empty() && self.best.is_none_or(|(n, _)| path.len() > n) {
            self.best = Some((path.len(), at));
        }
        if depth > MAX_DEPTH {
            return None;
        }
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                loop {
                    self.ws();
                    match *self.b.get(self.i)? {
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        b',' => self.i += 1,
                        b'"' => {
                            let key = self.string()?;
                            self.ws();
                            (*self.b.get(self.i)? == b':').then_some(())?;
                            self.i += 1;
                            let len = path.len();
                            if !path.is_empty() {
                                path.push('.');
                            }
                            path.push_str(&key);
                            // Only a branch on the way to the target matters.
                            if matches {
                                self.value(path, depth + 1)?;
                            } else {
                                self.skip(depth + 1)?;
                            }
                            path.truncate(len);
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut n = 0;
                loop {
                    self.ws();
                    match *self.b.get(self.i)? {
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        b',' => self.i += 1,
                        _ => {
                            let len = path.len();
                            path.push_str(&format!("[{n}]"));
                            if matches {
                                self.value(path, depth + 1)?;
                            } else {
                                self.skip(depth + 1)?;
                            }
                            path.truncate(len);
                            n += 1;
                        }
                    }
                }
            }
            b'"' => self.string().map(|_| ()),
            _ => {
                while self.i < self.b.len() && !matches!(self.b[self.i], b',' | b'}' | b']') {
                    self.i += 1;
                }
                Some(())
            }
        }
    }

    /// Skips a value without matching paths in it.
    fn skip(&mut self, depth: usize) -> Option<()> {
        let saved = self.target;
        self.target = "\u{0}";
        let r = self.value(&mut String::from("\u{1}"), depth);
        self.target = saved;
        r
    }

    /// A string (the cursor on its opening quote), decoded for the common
    /// escapes; `\u` escapes are kept as written.
    fn string(&mut self) -> Option<String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = *self.b.get(self.i)?;
                    self.i += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'b' => 8,
                        b'f' => 12,
                        b'u' => {
                            out.extend_from_slice(b"\\u");
                            continue;
                        }
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::locate;

    #[test]
    fn finds_values_and_ancestors() {
        let text = "{\n  \"tags\": [\"a\", \"b\"],\n  \"volumes\": [\n    {\"name\": \"os\"},\n    {\"name\": \"os\", \"storage\": \"x\"}\n  ]\n}";
        assert_eq!(locate(text, "tags[1]"), Some((2, 17)));
        assert_eq!(locate(text, "volumes[1].name"), Some((5, 14)));
        assert_eq!(locate(text, "volumes[1].storage"), Some((5, 31)));
        // Absent: the deepest ancestor present.
        assert_eq!(locate(text, "volumes[1].wwn"), Some((5, 5)));
        assert_eq!(locate(text, "attrs.memory.ram"), None);
        assert_eq!(locate(text, ""), None);
        assert_eq!(
            locate("{\"tag\": {\"a.b\": {\"x\": 1}}}", "tag.a.b.x"),
            Some((1, 23))
        );
        assert_eq!(locate("{\"volumes\": [", "volumes[0]"), Some((1, 13)));
    }
}
