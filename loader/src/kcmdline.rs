// SPDX-License-Identifier: Apache-2.0
//! What the kernel command line says about modules, read twice over as its two readers do:
//!
//! - as **kmod** reads `/proc/cmdline` (`kmod_config_parse_kcmdline`, libkmod-config.c,
//!   kmod 30-34, unchanged since 2013): every `module.param=value` word is an `options` line
//!   for `module`, appended after the modprobe.d files; `modprobe.blacklist=a,b` adds
//!   `blacklist` lines. A value may be quoted (`m.p="a b"`), and so may the whole word as
//!   GRUB writes it (`"m.p=a b"`, re-quoted to `p="a b"`). kmod reads past `--`.
//! - as the **kernel** parses its own parameters (`next_arg`, kernel/params.c), up to `--`:
//!   `module_blacklist=a,b` makes the kernel refuse to load those modules (the last one
//!   given wins; names compared as they are, the kernel does not turn `-` into `_`).

/// The module words of a kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleCmdline {
    /// `(module, option)` in command-line order; the module name with `-` turned to `_`.
    pub options: Vec<(String, String)>,
    /// `modprobe.blacklist=` entries: kmod's blacklist (aliases only).
    pub modprobe_blacklist: Vec<String>,
    /// `module_blacklist=` entries: the kernel refuses to load these.
    pub kernel_blacklist: Vec<String>,
}

impl ModuleCmdline {
    /// Parses the text of `/proc/cmdline`.
    pub fn parse(text: &str) -> Self {
        let mut c = Self::default();
        parse_as_kmod(text, &mut c);
        for (param, value) in kernel_args(text) {
            if param.replace('-', "_") == "module_blacklist" {
                c.kernel_blacklist = value
                    .unwrap_or_default()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
        }
        c
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ignore,
    Modname,
    Param,
    Value,
    Complete,
}

/// kmod's state machine, byte for byte (NUL-terminated buffer and all), so that odd words
/// are read as kmod reads them.
fn parse_as_kmod(text: &str, out: &mut ModuleCmdline) {
    let mut buf: Vec<u8> = text.as_bytes().to_vec();
    // kmod reads at most KCMD_LINE_SIZE (4096) bytes, one for the NUL.
    buf.truncate(4095);
    buf.push(0);
    let (mut modname, mut param, mut value) = (0usize, 0usize, 0usize);
    let mut quote_start: Option<usize> = None;
    let mut quoted = false;
    let mut state = State::Modname;
    let mut p = 0;
    loop {
        let c = buf[p];
        let last = c == 0;
        match c {
            b'"' => {
                quoted = !quoted;
                if quoted && state == State::Modname && p == modname {
                    quote_start = Some(p);
                    modname = p + 1;
                } else if state != State::Value {
                    state = State::Ignore;
                }
            }
            0 | b' ' | b'\n' | b'\t' | 0x0b | 0x0c | b'\r' => {
                if quoted && state == State::Value {
                } else if quoted {
                    state = State::Ignore;
                } else if matches!(state, State::Value | State::Param) {
                    buf[p] = 0;
                    state = State::Complete;
                } else {
                    modname = p + 1;
                    state = State::Modname;
                    quote_start = None;
                }
            }
            b'.' => {
                if state == State::Modname {
                    buf[p] = 0;
                    param = p + 1;
                    state = State::Param;
                } else if state == State::Param {
                    state = State::Ignore;
                }
            }
            b'=' => {
                if state == State::Param {
                    value = p + 1;
                    state = State::Value;
                } else if state == State::Modname {
                    state = State::Ignore;
                }
            }
            _ => {}
        }
        if state == State::Complete {
            if let Some(q) = quote_start.filter(|&q| q < modname && modname <= value) {
                // `"m.p=a b"` -> `m\0p="a b"`: shift `m\0p=` left over the quote.
                buf.copy_within(modname..value, q);
                value -= 1;
                modname -= 1;
                param -= 1;
                buf[value] = b'"';
            }
            result(
                cstr(&buf, modname),
                cstr(&buf, param),
                cstr(&buf, value),
                out,
            );
            modname = p + 1;
            state = State::Modname;
            quote_start = None;
        }
        if last {
            break;
        }
        p += 1;
    }
}

/// The NUL-terminated string at `at`.
fn cstr(buf: &[u8], at: usize) -> String {
    let end = buf[at..]
        .iter()
        .position(|&b| b == 0)
        .map_or(buf.len(), |n| at + n);
    String::from_utf8_lossy(&buf[at..end]).into_owned()
}

/// `kcmdline_parse_result`.
fn result(modname: String, param: String, value: String, out: &mut ModuleCmdline) {
    if modname == "modprobe" && param.starts_with("blacklist=") {
        out.modprobe_blacklist
            .extend(value.split(',').map(str::to_owned));
    } else if let Some(m) = underscores(&modname) {
        out.options.push((m, param.replace('\t', " ")));
    }
}

/// kmod's `underscores`: `-` becomes `_` except inside `[...]`; `None` for a stray `]` or an
/// unclosed `[`.
pub fn underscores(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut in_bracket = false;
    for c in s.chars() {
        match c {
            '[' if !in_bracket => in_bracket = true,
            ']' if in_bracket => in_bracket = false,
            ']' => return None,
            '-' if !in_bracket => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    (!in_bracket).then_some(out)
}

/// The kernel's own parameters (`parse_args` with `next_arg`), up to `--`.
fn kernel_args(text: &str) -> Vec<(String, Option<String>)> {
    let b = text.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    let skip = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip(&mut i);
    while i < b.len() {
        let mut start = i;
        let mut in_quote = false;
        let mut quoted = false;
        if b[start] == b'"' {
            start += 1;
            in_quote = true;
            quoted = true;
        }
        let mut j = start;
        let mut equals = None;
        while j < b.len() {
            if b[j].is_ascii_whitespace() && !in_quote {
                break;
            }
            if equals.is_none() && b[j] == b'=' {
                equals = Some(j);
            }
            if b[j] == b'"' {
                in_quote = !in_quote;
            }
            j += 1;
        }
        let word = &b[start..j];
        let mut end = word.len();
        let (param, val) = match equals.map(|e| e - start) {
            None => {
                if quoted && end > 0 && word[end - 1] == b'"' {
                    end -= 1;
                }
                (&word[..end], None)
            }
            Some(e) => {
                let mut v = e + 1;
                if word.get(v) == Some(&b'"') {
                    v += 1;
                    if end > v && word[end - 1] == b'"' {
                        end -= 1;
                    }
                } else if quoted && end > v && word[end - 1] == b'"' {
                    end -= 1;
                }
                (&word[..e], Some(&word[v.min(end)..end]))
            }
        };
        let param = String::from_utf8_lossy(param).into_owned();
        if val.is_none() && param == "--" {
            break;
        }
        out.push((param, val.map(|v| String::from_utf8_lossy(v).into_owned())));
        i = j;
        skip(&mut i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(text: &str) -> Vec<(String, String)> {
        ModuleCmdline::parse(text).options
    }

    fn pair(m: &str, o: &str) -> (String, String) {
        (m.into(), o.into())
    }

    #[test]
    fn module_options_as_kmod_reads_them() {
        assert_eq!(
            opts("root=/dev/vda e1000.TxDescriptors=128 quiet e1000-x.debug=1 foo.bar\n"),
            [
                pair("e1000", "TxDescriptors=128"),
                pair("e1000_x", "debug=1"),
                pair("foo", "bar")
            ]
        );
        // Quoted values keep their quotes (the kernel's parser strips them at load).
        assert_eq!(
            opts(r#"a.p="x y" b.q=1"#),
            [pair("a", r#"p="x y""#), pair("b", "q=1")]
        );
        // GRUB quotes the whole word: kmod re-quotes the value.
        assert_eq!(
            opts(r#"quiet "parport.dyndbg=file drivers/x.c +mpf" z.y=2"#),
            [
                pair("parport", r#"dyndbg="file drivers/x.c +mpf""#),
                pair("z", "y=2")
            ]
        );
        // A second dot, an `=` before any dot: ignored.
        assert_eq!(
            opts(r#"a.b.c=1 x=y.z 0.0.0.0:2024 ok.v=1"#),
            [pair("ok", "v=1")]
        );
        // A quote inside a name: kmod ignores everything up to the next quote.
        assert_eq!(opts(r#"a"b.c=1 lost.v=1 x" ok.v=2"#), [pair("ok", "v=2")]);
        // kmod does not stop at `--` (the kernel does).
        assert_eq!(opts("a.x=1 -- b.y=2"), [pair("a", "x=1"), pair("b", "y=2")]);
        // Tabs in a value become spaces, as in modprobe.d.
        assert_eq!(opts("m.p=\"a\tb\""), [pair("m", "p=\"a b\"")]);
        assert!(opts("").is_empty());
        assert!(opts("\"unterminated.p=x").len() <= 1);
    }

    #[test]
    fn blacklists_of_both_readers() {
        let c = ModuleCmdline::parse(
            "modprobe.blacklist=nouveau,e1000 module_blacklist=a,b quiet module-blacklist=c,d -- module_blacklist=z",
        );
        assert_eq!(c.modprobe_blacklist, ["nouveau", "e1000"]);
        // The kernel's parameter is set twice: the last wins; after `--` is init's.
        assert_eq!(c.kernel_blacklist, ["c", "d"]);
        assert!(c.options.is_empty(), "{:?}", c.options);
        let c = ModuleCmdline::parse(r#"module_blacklist="x,y""#);
        assert_eq!(c.kernel_blacklist, ["x", "y"]);
    }

    #[test]
    fn a_real_command_line() {
        // A cloud VM's, with init arguments after `--` that kmod reads too.
        let c = ModuleCmdline::parse("mitigations=auto console=ttyS0 random.trust_cpu=1 page_reporting.page_reporting_order=11 cpuidle_haltpoll.force=1 -- --init --addr 0.0.0.0:2024\n");
        assert_eq!(
            c.options,
            [
                pair("random", "trust_cpu=1"),
                pair("page_reporting", "page_reporting_order=11"),
                pair("cpuidle_haltpoll", "force=1")
            ]
        );
    }

    #[test]
    fn underscores_as_kmod() {
        assert_eq!(underscores("a-b").as_deref(), Some("a_b"));
        assert_eq!(underscores("a-[x-y]-b").as_deref(), Some("a_[x-y]_b"));
        assert_eq!(underscores("a]"), None);
        assert_eq!(underscores("a[b"), None);
    }

    #[test]
    fn hostile_command_lines_never_panic() {
        let alphabet = b"ab.=\" -\t,\n\x00";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..3000 {
            let mut t = vec![];
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                t.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let _ = ModuleCmdline::parse(&String::from_utf8_lossy(&t));
        }
    }
}
