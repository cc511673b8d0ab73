// SPDX-License-Identifier: Apache-2.0
//! Shell patterns as `fnmatch(3)` with no flags matches them: kmod matches the module name of
//! `softdep`, `install`, `remove` and `alias` lines (and the aliases in `modules.alias`) this
//! way, so `softdep snd_* pre: ...` applies to every module it matches.

/// Whether `name` matches `pattern`: `*` any run of bytes, `?` one byte, `[...]` a set (with
/// `!` or `^` to negate, `a-z` ranges), `\` quotes the next byte. POSIX classes (`[:alpha:]`)
/// are not supported; no module configuration uses them.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    matches(pattern.as_bytes(), name.as_bytes())
}

fn matches(p: &[u8], s: &[u8]) -> bool {
    // Iterative with one backtrack point for the last `*`, as glibc does.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match bracket(&p[pi..], s[si]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                // An unclosed `[` is a literal.
                None => (s[si] == b'[').then_some(1),
            },
            Some(b'\\') if pi + 1 < p.len() => (p[pi + 1] == s[si]).then_some(2),
            Some(&c) => (c == s[si]).then_some(1),
            None => None,
        };
        match step {
            Some(n) => {
                pi += n;
                si += 1;
            }
            None => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the bracket expression at the start of `p`: `(matched, length of the
/// expression)`, or `None` when it is not closed.
fn bracket(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((found != negate, i + 1));
        }
        first = false;
        let lo = if lo == b'\\' {
            i += 1;
            *p.get(i)?
        } else {
            lo
        };
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&h| h != b']') {
            let hi = p[i + 2];
            found |= lo <= c && c <= hi;
            i += 3;
        } else {
            found |= lo == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_as_fnmatch() {
        for (p, s, want) in [
            ("e1000", "e1000", true),
            ("e1000", "e1000e", false),
            ("e1000*", "e1000e", true),
            ("*", "", true),
            ("snd_*_pcm", "snd_hda_pcm", true),
            ("snd_*_pcm", "snd_hda_pcmx", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[ab]x", "bx", true),
            ("[!ab]x", "bx", false),
            ("[^ab]x", "cx", true),
            ("[a-c]x", "bx", true),
            ("[]]", "]", true),
            ("[", "[", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("*a*b", "xxaxxbxb", true),
            ("*a*b", "xxaxxbxc", false),
            ("pci:v00008086d*sv*", "pci:v00008086d000010D3sv1", true),
        ] {
            assert_eq!(fnmatch(p, s), want, "{p} ~ {s}");
        }
    }

    #[test]
    fn hostile_patterns_never_panic() {
        let alphabet = b"ab*?[]!^-\\";
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            let mut p = vec![];
            for _ in 0..(x % 12) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let p = String::from_utf8(p).unwrap();
            let _ = fnmatch(&p, "ab[*]a-b");
        }
    }
}
