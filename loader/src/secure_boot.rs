// SPDX-License-Identifier: Apache-2.0
//! Secure Boot preflight: whether the kernel enforces module signatures, which keys it
//! trusts, and the verdict on each image module a plan loads, before anything is unloaded.
//!
//! Enforcement: `module.sig_enforce` (`/sys/module/module/parameters/sig_enforce` is `Y`,
//! also with `CONFIG_MODULE_SIG_FORCE`), or lockdown in `integrity` or `confidentiality` mode
//! (`/sys/kernel/security/lockdown`), which refuses unsigned modules too.
//!
//! Trusted keys: the keys of `.builtin_trusted_keys`, `.secondary_trusted_keys`, `.machine`
//! (MOK, linked into the secondary keyring) and `.platform` (UEFI db; upstream kernels check
//! module signatures against the secondary keyring only and use `.platform` for kexec, but
//! a matching key there errs on the safe side: the kernel decides), found through
//! `/proc/keys` (serial, type, description) and the keyrings' member lists
//! (`keyctl(KEYCTL_READ)`, which root may do on these keyrings): a key listed in
//! `/proc/keys` but in none of them (anyone can add an `asymmetric` key to their own
//! keyring) does not count. A key's description is `<subject>: <id>`, the id being
//! the certificate's subjectKeyIdentifier in hex (its serial when it has none).
//!
//! Matching a module's signer, soundly where the facts allow:
//! - signed with a key id (`sign-file -k`): the key whose id it is; exact.
//! - signed with issuer and serial (sign-file's default): the kernel looks up that issuer and
//!   serial, which `/proc/keys` does not show. A key matches when its subject is the issuer
//!   (self-signed signing certificates: the kernel build's own key, keys made for mokutil or
//!   DKMS) or its id is the serial (a certificate without subjectKeyIdentifier). A signing
//!   certificate issued by another CA shows only its own subject, so it does not match: sign
//!   such modules with `sign-file -k`. A wrong match is caught by the kernel at load time and
//!   rolled back; a wrong refusal is not, so the rule errs on the side of matching.
//!
//! Under enforcement, an image module that is not signed, whose trailer the kernel would
//! refuse, or whose signer matches no trusted key (when the keyrings can be read) fails the
//! set's preflight with one line naming the file, the key and what to do. Without
//! enforcement it only says so: a note, and `unsigned` in the status.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;

use crate::module_signature::{read_signature, SignatureError, Signer};
use crate::plan::{Origin, PlannedModule, PreflightError};

/// The kernel's keyrings whose keys may sign modules, in the kernel's search order.
pub const TRUSTED_KEYRINGS: &[&str] = &[
    ".builtin_trusted_keys",
    ".secondary_trusted_keys",
    ".machine",
    ".platform",
];

/// What to do about a module the kernel would refuse.
const WHAT_TO_DO: &str =
    "enrol its key with mokutil --import (and confirm at the next boot), or sign the module with a key the kernel trusts";

/// Why the kernel refuses modules without a trusted signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// `module.sig_enforce` (or a kernel built with `CONFIG_MODULE_SIG_FORCE`).
    SigEnforce,
    /// Kernel lockdown, in the named mode.
    Lockdown(String),
}

impl std::fmt::Display for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SigEnforce => f.write_str("module.sig_enforce"),
            Self::Lockdown(mode) => write!(f, "lockdown={mode}"),
        }
    }
}

/// A key in one of [`TRUSTED_KEYRINGS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The trusted keyring it was found under.
    pub keyring: String,
    /// `<subject>: <id hex>`.
    pub description: String,
}

impl TrustedKey {
    /// The subject and the lower-case hex id of the description.
    fn parts(&self) -> (&str, &str) {
        self.description
            .rsplit_once(": ")
            .unwrap_or(("", &self.description))
    }
}

/// What the trusted keyrings hold, as far as they can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keyrings {
    /// Their keys; `hidden`: members `/proc/keys` does not show (a signer may be one).
    Read {
        /// The keys.
        keys: Vec<TrustedKey>,
        /// Members not visible.
        hidden: usize,
    },
    /// Why they cannot be read: signers are not checked.
    Unreadable(String),
}

/// The kernel's rules for module signatures, read once per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleTrust {
    /// `Some`: unsigned or untrusted modules are refused by the kernel.
    pub enforcement: Option<Enforcement>,
    /// The trusted keys.
    pub keyrings: Keyrings,
    /// What could not be read (going on as if not enforced).
    pub warnings: Vec<String>,
}

#[cfg(test)]
impl ModuleTrust {
    /// A kernel that does not enforce module signatures; keyrings not read.
    pub fn not_enforced() -> Self {
        Self {
            enforcement: None,
            keyrings: Keyrings::Unreadable("not read in this test".into()),
            warnings: vec![],
        }
    }
}

/// The member serials of a keyring (`keyctl(KEYCTL_READ)`; a fake in tests).
pub type KeyringMembers<'a> = &'a dyn Fn(i32) -> io::Result<Vec<i32>>;

impl ModuleTrust {
    /// Reads enforcement from `sysfs` and `securityfs`, and the trusted keys from
    /// `proc_keys` and `members`.
    pub fn read(
        sysfs: &Path,
        securityfs: &Path,
        proc_keys: &Path,
        members: KeyringMembers<'_>,
    ) -> Self {
        let mut warnings = vec![];
        let mut enforcement = None;
        let sig = sysfs.join("module/module/parameters/sig_enforce");
        match std::fs::read_to_string(&sig) {
            Ok(t) if t.trim() == "Y" => enforcement = Some(Enforcement::SigEnforce),
            Ok(_) => {}
            // A kernel without CONFIG_MODULE_SIG has no such parameter and checks nothing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warnings.push(format!("reading {}: {e}", sig.display())),
        }
        let lockdown = securityfs.join("lockdown");
        match std::fs::read_to_string(&lockdown) {
            Ok(t) => {
                let mode = t
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'));
                if let Some(m @ ("integrity" | "confidentiality")) = mode {
                    enforcement = enforcement.or(Some(Enforcement::Lockdown(m.to_owned())));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warnings.push(format!("reading {}: {e}", lockdown.display())),
        }
        Self {
            enforcement,
            keyrings: read_keyrings(proc_keys, members),
            warnings,
        }
    }

    /// One line for the log and the dry run.
    pub fn summary(&self) -> String {
        let mut s = match &self.enforcement {
            Some(e) => format!("module signatures: enforced ({e})"),
            None => "module signatures: not enforced".to_owned(),
        };
        match &self.keyrings {
            Keyrings::Read { keys, hidden } => {
                let list: Vec<String> = keys
                    .iter()
                    .map(|k| format!("{} {}", k.keyring, k.description))
                    .collect();
                s += &format!("; trusted keys: {}", keys.len());
                if !list.is_empty() {
                    s += &format!(" ({})", list.join(", "));
                }
                if *hidden > 0 {
                    s += &format!(", {hidden} not visible in /proc/keys");
                }
            }
            Keyrings::Unreadable(why) => s += &format!("; trusted keys not read: {why}"),
        }
        for w in &self.warnings {
            s += &format!("; {w} (taken as not enforced)");
        }
        s
    }

    /// The verdict on the module file at `path`.
    pub fn verdict(&self, path: &Path) -> Verdict {
        let sig = match read_signature(path) {
            Ok(None) => return Verdict::Unsigned,
            Ok(Some(s)) => s,
            Err(e @ SignatureError::Malformed(_)) => return Verdict::Malformed(e.to_string()),
            Err(e @ SignatureError::Unreadable(_)) => return Verdict::Unchecked(e.to_string()),
        };
        let signer = sig.signers[0].clone();
        let Keyrings::Read { keys, hidden } = &self.keyrings else {
            return Verdict::Signed {
                signer,
                key: None,
                trusted: None,
            };
        };
        for s in &sig.signers {
            if let Some(k) = keys.iter().find(|k| matches(s, k)) {
                return Verdict::Signed {
                    signer: s.clone(),
                    key: Some(k.clone()),
                    trusted: Some(true),
                };
            }
        }
        Verdict::Signed {
            signer,
            key: None,
            // A hidden member may be the signer: not known.
            trusted: (*hidden == 0).then_some(false),
        }
    }
}

/// Whether trusted key `k` may be the one `s` names (see the module's doc).
fn matches(s: &Signer, k: &TrustedKey) -> bool {
    let (subject, id) = k.parts();
    match s {
        Signer::KeyId(kid) => hex(kid) == id,
        Signer::IssuerSerial {
            issuer_name,
            serial,
            ..
        } => subject == issuer_name || hex(serial) == id,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the preflight found for one image module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No signature.
    Unsigned,
    /// A trailer the kernel refuses (not PKCS#7, unreadable PKCS#7), with why.
    Malformed(String),
    /// Not checked, with why (a gzip module: the kernel decompresses it, not this loader).
    Unchecked(String),
    /// Signed.
    Signed {
        /// Who signed it.
        signer: Signer,
        /// The trusted key it matched.
        key: Option<TrustedKey>,
        /// Whether the kernel trusts it: `None` when the keyrings could not be read.
        trusted: Option<bool>,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsigned => f.write_str("not signed"),
            Self::Malformed(e) | Self::Unchecked(e) => f.write_str(e),
            Self::Signed {
                signer,
                key: Some(k),
                ..
            } => write!(
                f,
                "signed by {signer}, trusted: {} {}",
                k.keyring, k.description
            ),
            Self::Signed {
                signer,
                trusted: Some(false),
                ..
            } => write!(f, "signed by {signer}, a key the kernel does not trust"),
            Self::Signed { signer, .. } => {
                write!(
                    f,
                    "signed by {signer}, not matched against the trusted keys"
                )
            }
        }
    }
}

/// The preflight: the verdict on each image module `load` loads (not those loaded already),
/// kept in [`PlannedModule::signature`]. Under enforcement, a required module the kernel
/// would refuse fails the set; otherwise it is a note.
pub fn check_signatures(
    trust: &ModuleTrust,
    load: &mut [PlannedModule],
    notes: &mut Vec<String>,
) -> Result<(), PreflightError> {
    let where_keys = match &trust.keyrings {
        Keyrings::Read { .. } => TRUSTED_KEYRINGS.join(", "),
        Keyrings::Unreadable(_) => "the trusted keyrings".to_owned(),
    };
    for m in load
        .iter_mut()
        .filter(|m| m.origin == Origin::Image && !m.already_loaded)
    {
        let v = trust.verdict(&m.path);
        let file = m.path.display();
        let refused = match &v {
            Verdict::Unsigned => Some(format!("module file {file} is not signed")),
            Verdict::Malformed(e) => Some(format!("module file {file}: {e}")),
            Verdict::Signed {
                signer,
                trusted: Some(false),
                ..
            } => Some(format!(
                "module file {file} is signed by {signer}, which is in none of {where_keys}"
            )),
            Verdict::Unchecked(e) => {
                notes.push(format!(
                    "module file {file}: {e}; the kernel checks it at load time"
                ));
                None
            }
            Verdict::Signed { .. } => None,
        };
        m.signature = Some(v);
        let Some(why) = refused else { continue };
        match &trust.enforcement {
            Some(e) if m.required => {
                return Err(PreflightError(format!(
                    "{why}, and the kernel enforces module signatures ({e}): {WHAT_TO_DO}"
                )))
            }
            Some(e) => notes.push(format!(
                "{why}: the kernel will refuse it ({e}), a softdep: the set goes on without it"
            )),
            None => notes.push(format!(
                "{why}: loaded anyway, the kernel does not enforce module signatures (it taints itself)"
            )),
        }
    }
    Ok(())
}

/// The keys of [`TRUSTED_KEYRINGS`], from `/proc/keys` and the keyrings' member lists.
fn read_keyrings(proc_keys: &Path, members: KeyringMembers<'_>) -> Keyrings {
    let text = match std::fs::read_to_string(proc_keys) {
        Ok(t) => t,
        Err(e) => return Keyrings::Unreadable(format!("reading {}: {e}", proc_keys.display())),
    };
    let listed = parse_proc_keys(&text);
    let mut keys = vec![];
    let mut hidden = 0;
    let mut seen = HashSet::new();
    let mut found_any = false;
    for name in TRUSTED_KEYRINGS {
        let Some((&serial, _)) = listed
            .iter()
            .find(|(_, k)| k.kind == "keyring" && k.description == *name)
        else {
            continue;
        };
        found_any = true;
        let mut todo = vec![serial];
        while let Some(ring) = todo.pop() {
            if !seen.insert(ring) {
                continue;
            }
            let m = match members(ring) {
                Ok(m) => m,
                Err(e) => {
                    return Keyrings::Unreadable(format!(
                        "reading the members of keyring {name} ({ring:08x}): {e}"
                    ))
                }
            };
            for serial in m {
                match listed.get(&serial) {
                    Some(k) if k.kind == "keyring" => todo.push(serial),
                    Some(k) if k.kind == ASYMMETRIC => {
                        if seen.insert(serial) {
                            keys.push(TrustedKey {
                                keyring: (*name).to_owned(),
                                description: k.description.clone(),
                            });
                        }
                    }
                    Some(_) => {}
                    None => hidden += 1,
                }
            }
        }
    }
    if !found_any {
        return Keyrings::Unreadable(format!(
            "none of {} is in {}",
            TRUSTED_KEYRINGS.join(", "),
            proc_keys.display()
        ));
    }
    Keyrings::Read { keys, hidden }
}

/// The key type `asymmetric` as `/proc/keys` prints it: the type column is `%-9.9s`.
const ASYMMETRIC: &str = "asymmetri";

/// A key as `/proc/keys` lists it.
#[derive(Debug)]
struct ListedKey {
    kind: String,
    /// The key's description, without what the key type adds after it.
    description: String,
}

/// `/proc/keys`: `serial flags usage timeout perm uid gid type description...`, the last
/// being the type's `describe`: a keyring adds `: <count>` or `: empty`, an asymmetric key
/// `: <subtype> [<id tail>] [<capabilities>]`.
fn parse_proc_keys(text: &str) -> HashMap<i32, ListedKey> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut rest = line;
        let mut fields = vec![];
        for _ in 0..8 {
            rest = rest.trim_start();
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            fields.push(&rest[..end]);
            rest = &rest[end..];
        }
        let described = rest.trim();
        let Ok(serial) = u32::from_str_radix(fields[0], 16) else {
            continue;
        };
        let kind = fields[7];
        let description = match kind {
            "keyring" => described.rsplit_once(": ").map_or(described, |(d, _)| d),
            ASYMMETRIC => described
                .strip_suffix(']')
                .and_then(|d| d.rsplit_once(" ["))
                .and_then(|(d, _)| d.rsplit_once(": "))
                .map_or(described, |(d, _)| d),
            _ => described,
        };
        out.insert(
            serial as i32,
            ListedKey {
                kind: kind.to_owned(),
                description: description.to_owned(),
            },
        );
    }
    out
}

/// `KEYCTL_READ` of `<linux/keyctl.h>`.
const KEYCTL_READ: libc::c_long = 11;

/// The member serials of keyring `id`: `keyctl(KEYCTL_READ)`, which needs read permission on
/// the keyring (root has it on the trusted keyrings).
#[allow(unsafe_code)] // keyctl(2) has no wrapper in std or nix.
pub fn keyring_members(id: i32) -> io::Result<Vec<i32>> {
    let mut buf: Vec<i32> = vec![0; 64];
    loop {
        let bytes = buf.len() * std::mem::size_of::<i32>();
        // SAFETY: the kernel writes at most `bytes` bytes to `buf`, which holds that many.
        let r = unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_READ,
                libc::c_long::from(id),
                buf.as_mut_ptr(),
                bytes,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let need = r as usize;
        if need <= bytes {
            buf.truncate(need / std::mem::size_of::<i32>());
            return Ok(buf);
        }
        // The keyring grew or was larger: read again with room for all.
        buf = vec![0; need.div_ceil(std::mem::size_of::<i32>())];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module_signature::tests::{make_key, sign_file};
    use crate::module_signature::MAGIC;
    const MAGIC_LEN: usize = MAGIC.len();
    use std::process::Command;

    /// A `/proc/keys` as a Debian 6.1 kernel shows it (the type column cut to 9 characters,
    /// the key's description followed by what `asymmetric_key_describe` adds), plus a
    /// lookalike in a user keyring.
    const PROC_KEYS: &str = "\
0b1c57d0 I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 1
1d4e3b5e I------     1 perm 1f0f0000     0     0 keyring   .secondary_trusted_keys: 2
2a7c0c6b I------     1 perm 1f0f0000     0     0 keyring   .machine: empty
1b6fa0e5 I------     1 perm 1f030000     0     0 asymmetri Build time autogenerated kernel key: 8d2e9f0c1b0e3f4a: X509.rsa 1b0e3f4a []
2222aaaa I--Q---     1 perm 3f010000     0     0 keyring   _ses: 1
3333bbbb I--Q---     1 perm 3f010000     0     0 asymmetri kd1 user key: 0011: X509.rsa 00000011 []
";

    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn new(sig_enforce: &str, lockdown: Option<&str>) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("sys/module/module/parameters");
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("sig_enforce"), sig_enforce).unwrap();
            std::fs::create_dir_all(dir.path().join("security")).unwrap();
            if let Some(l) = lockdown {
                std::fs::write(dir.path().join("security/lockdown"), l).unwrap();
            }
            std::fs::write(dir.path().join("keys"), PROC_KEYS).unwrap();
            Self { dir }
        }

        fn trust(&self, members: KeyringMembers<'_>) -> ModuleTrust {
            let p = self.dir.path();
            ModuleTrust::read(
                &p.join("sys"),
                &p.join("security"),
                &p.join("keys"),
                members,
            )
        }

        fn add_key(&self, serial: &str, description: &str) {
            let mut t = std::fs::read_to_string(self.dir.path().join("keys")).unwrap();
            t += &format!("{serial} I------     1 perm 1f030000     0     0 asymmetri {description}: X509.rsa 0 []\n");
            std::fs::write(self.dir.path().join("keys"), t).unwrap();
        }
    }

    /// Members as the kernel links them: secondary holds builtin and .machine; `extra` are
    /// more members of `.machine`.
    fn members(extra: Vec<i32>) -> impl Fn(i32) -> io::Result<Vec<i32>> {
        move |ring| match ring as u32 {
            0x0b1c57d0 => Ok(vec![0x1b6fa0e5]),
            0x1d4e3b5e => Ok(vec![0x0b1c57d0, 0x2a7c0c6b]),
            0x2a7c0c6b => Ok(extra.clone()),
            r => panic!("keyring {r:08x} is not trusted"),
        }
    }

    #[test]
    fn enforcement_from_sig_enforce_or_lockdown() {
        let none = |_: i32| Ok(vec![]);
        let n = Node::new("N\n", Some("[none] integrity confidentiality\n"));
        assert_eq!(n.trust(&none).enforcement, None);
        let n = Node::new("Y\n", None);
        assert_eq!(n.trust(&none).enforcement, Some(Enforcement::SigEnforce));
        let n = Node::new("N\n", Some("none [integrity] confidentiality\n"));
        let t = n.trust(&none);
        assert_eq!(
            t.enforcement,
            Some(Enforcement::Lockdown("integrity".into()))
        );
        assert!(t
            .summary()
            .starts_with("module signatures: enforced (lockdown=integrity)"));
        let n = Node::new("N\n", Some("none integrity [confidentiality]\n"));
        assert!(n.trust(&none).enforcement.is_some());
        // No sig_enforce parameter: a kernel without module signing.
        std::fs::remove_file(
            n.dir
                .path()
                .join("sys/module/module/parameters/sig_enforce"),
        )
        .unwrap();
        std::fs::remove_file(n.dir.path().join("security/lockdown")).unwrap();
        let t = n.trust(&none);
        assert_eq!((t.enforcement, t.warnings.len()), (None, 0));
    }

    #[test]
    fn trusted_keys_are_the_trusted_keyrings_members_only() {
        let n = Node::new("Y\n", None);
        let t = n.trust(&members(vec![]));
        let Keyrings::Read { keys, hidden } = &t.keyrings else {
            panic!("{t:?}")
        };
        assert_eq!(*hidden, 0);
        // Found through builtin and again through secondary: listed once; the user key not.
        assert_eq!(
            keys,
            &[TrustedKey {
                keyring: ".builtin_trusted_keys".into(),
                description: "Build time autogenerated kernel key: 8d2e9f0c1b0e3f4a".into()
            }]
        );
        assert!(t.summary().contains("trusted keys: 1 (.builtin_trusted_keys Build time autogenerated kernel key: 8d2e9f0c1b0e3f4a)"), "{}", t.summary());
        // A member /proc/keys does not show.
        let t = n.trust(&members(vec![0x7777]));
        assert!(matches!(t.keyrings, Keyrings::Read { hidden: 1, .. }));
        // keyctl refused: not read, said why.
        let t = n.trust(&|_| Err(io::Error::from_raw_os_error(libc::EACCES)));
        let Keyrings::Unreadable(why) = &t.keyrings else {
            panic!()
        };
        assert!(
            why.contains("keyring .builtin_trusted_keys (0b1c57d0)"),
            "{why}"
        );
        // No trusted keyring at all in /proc/keys.
        std::fs::write(n.dir.path().join("keys"), "").unwrap();
        assert!(matches!(
            n.trust(&members(vec![])).keyrings,
            Keyrings::Unreadable(_)
        ));
    }

    fn planned(path: &Path, required: bool) -> PlannedModule {
        PlannedModule {
            name: "e1000".into(),
            path: path.to_owned(),
            origin: Origin::Image,
            params: vec![],
            info: None,
            symbols: None,
            configured: true,
            reason: crate::plan::Reason::Configured,
            required,
            already_loaded: false,
            blacklisted: None,
            signature: None,
        }
    }

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An openssl SKID, as `/proc/keys` shows it in the description.
    fn skid(crt: &Path) -> String {
        let out = Command::new("openssl")
            .args([
                "x509",
                "-inform",
                "DER",
                "-noout",
                "-ext",
                "subjectKeyIdentifier",
                "-in",
            ])
            .arg(crt)
            .output()
            .unwrap();
        let t = String::from_utf8(out.stdout).unwrap();
        t.lines()
            .nth(1)
            .unwrap()
            .trim()
            .replace(':', "")
            .to_lowercase()
    }

    #[test]
    fn the_preflight_refuses_what_the_kernel_would_refuse() {
        let n = Node::new("Y\n", None);
        let d = n.dir.path();
        let (key, crt) = make_key(d, "mok", "/CN=kd1 MOK key");
        let (other_key, other_crt) = make_key(d, "other", "/CN=kd1 other key");
        let ko = |name: &str| {
            let p = d.join(name);
            std::fs::write(&p, crate::testutil::fake_ko(&[("name", "e1000")])).unwrap();
            p
        };
        let unsigned = ko("unsigned.ko");
        let by_mok = ko("mok.ko");
        run(Command::new(sign_file())
            .arg("sha256")
            .arg(&key)
            .arg(&crt)
            .arg(&by_mok));
        let by_mok_kid = ko("mok-kid.ko");
        run(Command::new(sign_file())
            .args(["-k", "sha256"])
            .arg(&key)
            .arg(&crt)
            .arg(&by_mok_kid));
        let by_other = ko("other.ko");
        run(Command::new(sign_file())
            .arg("sha256")
            .arg(&other_key)
            .arg(&other_crt)
            .arg(&by_other));

        // The MOK key is not enrolled: every module is refused, each with one clear line.
        let t = n.trust(&members(vec![]));
        for (p, want) in [
            (&unsigned, "is not signed, and the kernel enforces module signatures (module.sig_enforce): enrol its key with mokutil --import".to_owned()),
            (&by_mok, "is signed by \"kd1 MOK key\" (serial ".to_owned()),
            (&by_mok_kid, format!("is signed by key id {}", skid(&crt).to_uppercase().as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":"))),
        ] {
            let mut load = vec![planned(p, true)];
            let e = check_signatures(&t, &mut load, &mut vec![]).unwrap_err().to_string();
            assert!(e.starts_with(&format!("preflight: module file {} ", p.display())), "{e}");
            assert!(e.contains(&want), "{want} in {e}");
            assert!(e.ends_with("or sign the module with a key the kernel trusts"), "{e}");
            assert_eq!(e.lines().count(), 1);
        }
        // Enrolled (.machine, as mokutil --import puts it): both forms of signer match it.
        let id = skid(&crt);
        n.add_key("44444444", &format!("kd1 MOK key: {id}"));
        let t = n.trust(&members(vec![0x44444444]));
        for p in [&by_mok, &by_mok_kid] {
            let mut load = vec![planned(p, true)];
            check_signatures(&t, &mut load, &mut vec![]).unwrap();
            let Some(Verdict::Signed {
                key: Some(k),
                trusted: Some(true),
                ..
            }) = &load[0].signature
            else {
                panic!("{:?}", load[0].signature)
            };
            assert_eq!(k.keyring, ".secondary_trusted_keys");
        }
        // Another key with the same subject is not the -k signer's.
        let mut t2 = t.clone();
        let Keyrings::Read { keys, .. } = &mut t2.keyrings else {
            panic!()
        };
        keys.last_mut().unwrap().description = "kd1 MOK key: 00ff".into();
        let mut load = vec![planned(&by_mok_kid, true)];
        assert!(check_signatures(&t2, &mut load, &mut vec![]).is_err());
        // Still refused: the other key.
        let mut load = vec![planned(&by_other, true)];
        let e = check_signatures(&t, &mut load, &mut vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"kd1 other key\""), "{e}");
        // A softdep the kernel would refuse is a note, not a failed set.
        let mut load = vec![planned(&by_other, false)];
        let mut notes = vec![];
        check_signatures(&t, &mut load, &mut notes).unwrap();
        assert!(notes[0].contains("a softdep"), "{notes:?}");
        // Keyrings that cannot be read: signed is enough, unsigned is not.
        let t = n.trust(&|_| Err(io::Error::from_raw_os_error(libc::EPERM)));
        check_signatures(&t, &mut [planned(&by_other, true)], &mut vec![]).unwrap();
        assert!(check_signatures(&t, &mut [planned(&unsigned, true)], &mut vec![]).is_err());
        // A gzip module is the kernel's to decompress: not checked here, said so.
        let gz = d.join("x.ko.gz");
        std::fs::write(&gz, b"\x1f\x8b").unwrap();
        let mut notes = vec![];
        check_signatures(&t, &mut [planned(&gz, true)], &mut notes).unwrap();
        assert!(
            notes[0].contains("the kernel checks it at load time"),
            "{notes:?}"
        );
        // A trailer the kernel refuses is refused.
        let mut bad = std::fs::read(&by_other).unwrap();
        let n = bad.len();
        bad[n - MAGIC_LEN - 10] = 1; // id_type
        let bad_ko = d.join("bad.ko");
        std::fs::write(&bad_ko, bad).unwrap();
        let e = check_signatures(&t, &mut [planned(&bad_ko, true)], &mut vec![]).unwrap_err();
        assert!(e.to_string().contains("is not PKCS#7"), "{e}");
        // A module loaded already, or from the node, is not checked.
        let mut m = planned(&unsigned, true);
        m.already_loaded = true;
        check_signatures(&t, &mut [m], &mut vec![]).unwrap();
    }

    #[test]
    fn debians_modules_match_the_kernel_build_key() {
        let m = crate::module_signature::tests::debian_e1000();
        let sig = crate::module_signature::signature_of(&m).unwrap().unwrap();
        let key = |d: &str| TrustedKey {
            keyring: ".builtin_trusted_keys".into(),
            description: d.into(),
        };
        // The build key's description: its subject and its subjectKeyIdentifier.
        assert!(matches(
            &sig.signers[0],
            &key("Build time autogenerated kernel key: 0a1b2c")
        ));
        assert!(!matches(
            &sig.signers[0],
            &key("Debian Secure Boot CA: 0a1b2c")
        ));
        // A certificate without subjectKeyIdentifier is described by its serial.
        assert!(matches(
            &sig.signers[0],
            &key("Other: 5ee11331142993a99cd5035b98534874661bdee5")
        ));
    }

    #[test]
    fn without_enforcement_unsigned_is_noted() {
        let n = Node::new("N\n", None);
        let p = n.dir.path().join("x.ko");
        std::fs::write(&p, crate::testutil::fake_ko(&[("name", "e1000")])).unwrap();
        let t = n.trust(&members(vec![]));
        let mut load = vec![planned(&p, true)];
        let mut notes = vec![];
        check_signatures(&t, &mut load, &mut notes).unwrap();
        assert_eq!(load[0].signature, Some(Verdict::Unsigned));
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("is not signed: loaded anyway"),
            "{notes:?}"
        );
    }

    /// A swap of image module ice (unsigned, as the fixture builds it, or signed with
    /// `key`) on a node whose kernel enforces signatures or not; `enrolled`: the key is in
    /// `.machine`.
    fn swap_ice(
        enforce: bool,
        key: Option<(&Path, &Path)>,
        enrolled: Option<&str>,
    ) -> (crate::swap::SwapResult, crate::testutil::FakeKernel) {
        use crate::set_plan::{Node as SwapNode, SetInput};
        use crate::testutil::{FakeKernel, Fixture, KVER};
        let f = Fixture::new();
        f.node_module("ice", "kernel/drivers/net/ice.ko.xz", &[]);
        f.image_module("ice", "SRC-OOT", &[]);
        let ko = f.image_dir().join("ice.ko");
        if let Some((key, crt)) = key {
            run(Command::new(sign_file())
                .arg("sha256")
                .arg(key)
                .arg(crt)
                .arg(&ko));
        }
        let params = f.sysfs().join("module/module/parameters");
        std::fs::create_dir_all(&params).unwrap();
        std::fs::write(
            params.join("sig_enforce"),
            if enforce { "Y\n" } else { "N\n" },
        )
        .unwrap();
        let mut keys = PROC_KEYS.to_owned();
        let mut machine = vec![];
        if let Some(desc) = enrolled {
            keys += &format!("44444444 I------     1 perm 1f030000     0     0 asymmetri {desc}: X509.rsa 0 []\n");
            machine.push(0x44444444);
        }
        std::fs::write(f.path("proc-keys"), keys).unwrap();
        let trust = ModuleTrust::read(
            &f.sysfs(),
            &f.path("security"),
            &f.path("proc-keys"),
            &members(machine),
        );
        let mut k = FakeKernel::new();
        k.preload("ice", "INTREE-ice");
        let in_tree = crate::modules_dep::ModuleIndex::in_tree(f.node_dir());
        let image = crate::modules_dep::ModuleIndex::image(f.image_dir());
        let modprobe = f.modprobe_config();
        let (sysfs, fw) = (f.sysfs(), f.firmware_dir());
        let node = SwapNode {
            kernel_release: KVER,
            in_tree: &in_tree,
            modprobe: &modprobe,
            sysfs: &sysfs,
            firmware_dir: &fw,
            bind_timeout: std::time::Duration::ZERO,
            module_trust: &trust,
            symvers: &crate::symvers::KernelSymvers::search(&f.node_dir(), &f.path("boot"), KVER),
        };
        let set = f.set(&["ice"], &["ice"]);
        let input = SetInput {
            label: "99-ice/ice",
            set: &set,
            image: &image,
            firmware: None,
            image_ref: "registry.local/kmod/s1:v1",
        };
        let r = crate::swap::swap_set(&mut k, node, input);
        (r, k)
    }

    #[test]
    fn a_swap_under_enforcement_refuses_before_unloading() {
        use kmod_day1_contract::SetState;
        let (r, k) = swap_ice(true, None, None);
        assert_eq!(r.state, SetState::Failed);
        let e = r.error.unwrap();
        assert!(e.starts_with("preflight: module file "), "{e}");
        assert!(e.contains("ice.ko is not signed, and the kernel enforces module signatures (module.sig_enforce)"), "{e}");
        assert!(k.calls.is_empty(), "nothing unloaded: {:?}", k.calls);
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("INTREE-ice"));
        assert_eq!(r.rollback, crate::swap::Rollback::NotNeeded);

        let d = tempfile::tempdir().unwrap();
        let (key, crt) = make_key(d.path(), "mok", "/CN=kd1 MOK key");
        // Signed, key not enrolled: refused, naming the key.
        let (r, k) = swap_ice(true, Some((&key, &crt)), None);
        let e = r.error.unwrap();
        assert!(e.contains("is signed by \"kd1 MOK key\" (serial "), "{e}");
        assert!(e.contains("which is in none of .builtin_trusted_keys, .secondary_trusted_keys, .machine, .platform"), "{e}");
        assert!(k.calls.is_empty());
        // Enrolled: swapped.
        let desc = format!("kd1 MOK key: {}", skid(&crt));
        let (r, k) = swap_ice(true, Some((&key, &crt)), Some(&desc));
        assert_eq!(r.error, None);
        assert_eq!(k.calls, ["unload ice", "load ice"]);
        assert!(!r.modules[0].unsigned);
    }

    #[test]
    fn a_swap_without_enforcement_loads_and_marks_unsigned() {
        use kmod_day1_contract::SetState;
        let (r, k) = swap_ice(false, None, None);
        assert_eq!((r.state, r.error), (SetState::Loaded, None));
        assert_eq!(k.loaded["ice"].srcversion.as_deref(), Some("SRC-OOT"));
        assert!(r.modules[0].unsigned);
        let j = serde_json::to_value(&r.modules[0]).unwrap();
        assert_eq!(j["unsigned"], true);
        let d = tempfile::tempdir().unwrap();
        let (key, crt) = make_key(d.path(), "k", "/CN=kd1 key");
        let (r, _) = swap_ice(false, Some((&key, &crt)), None);
        assert!(!r.modules[0].unsigned);
        assert!(serde_json::to_value(&r.modules[0])
            .unwrap()
            .get("unsigned")
            .is_none());
    }

    #[test]
    fn the_kernels_keyrings_can_be_read_when_the_kernel_has_them() {
        // This host's kernel: /proc/keys and keyctl, for real. Its trusted keyring may be
        // empty; reading it must work (root) or say why.
        let t = ModuleTrust::read(
            Path::new("/sys"),
            Path::new("/sys/kernel/security"),
            Path::new("/proc/keys"),
            &keyring_members,
        );
        let root =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        if Path::new("/proc/keys").exists() && root {
            assert!(matches!(t.keyrings, Keyrings::Read { .. }), "{t:?}");
        }
    }
}
