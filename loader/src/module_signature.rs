// SPDX-License-Identifier: Apache-2.0
//! The signature `sign-file` appends to a module, and who made it.
//!
//! A signed module ends with a PKCS#7 `SignedData` (DER), the 12-byte
//! `struct module_signature` (`algo`, `hash`, `id_type`, `signer_len`, `key_id_len`, three
//! pad bytes, all 0 but `id_type` = 2 for PKCS#7; then the PKCS#7 length, big-endian u32) and
//! the magic `~Module signature appended~\n`. The kernel reads the same trailer of the
//! decompressed module (`mod_check_sig`), so a compressed module is decompressed first.
//!
//! The signer is the `sid` of each `SignerInfo`: the issuer and serial number of the signing
//! certificate (sign-file's default), or its subject key identifier (`sign-file -k`). Only
//! what is needed to name the signer is read, with a small DER reader: nothing is verified
//! here (the kernel does that at load time).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::decompress::{self, Compression};

/// What ends a signed module.
pub const MAGIC: &[u8] = b"~Module signature appended~\n";

/// `struct module_signature`'s size.
const INFO_LEN: usize = 12;

/// `PKEY_ID_PKCS7`.
const ID_PKCS7: u8 = 2;

/// `1.2.840.113549.1.7.2`, signedData.
const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
/// `2.5.4.3`, commonName.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// `2.5.4.10`, organizationName.
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
/// `1.2.840.113549.1.9.1`, emailAddress.
const OID_EMAIL: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];

/// Who signed a module: the `sid` of a PKCS#7 `SignerInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// `issuerAndSerialNumber`: the signing certificate's issuer and serial number.
    IssuerSerial {
        /// The issuer's common name (what `modinfo` shows as `signer`).
        issuer_cn: String,
        /// The issuer as the kernel names a certificate's subject in a key description
        /// (`x509_fabricate_name`: CN, or `O: CN`, or O, or the e-mail address).
        issuer_name: String,
        /// The serial number's bytes as encoded (with a leading 0 when the high bit is set).
        serial: Vec<u8>,
    },
    /// `subjectKeyIdentifier` (`sign-file -k`).
    KeyId(Vec<u8>),
}

impl Signer {
    /// The key's id as `modinfo` shows it (`sig_key`): upper-case hex bytes joined by `:`.
    pub fn key_id(&self) -> String {
        let bytes = match self {
            Self::IssuerSerial { serial, .. } => trim_sign_byte(serial),
            Self::KeyId(id) => id,
        };
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
        hex.join(":")
    }
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::IssuerSerial { issuer_cn, .. } => {
                write!(f, "\"{issuer_cn}\" (serial {})", self.key_id())
            }
            Self::KeyId(_) => write!(f, "key id {}", self.key_id()),
        }
    }
}

/// A module file's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSignature {
    /// Who signed it (sign-file writes one signer; the kernel accepts any trusted one).
    pub signers: Vec<Signer>,
}

/// Why a module's signature could not be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The file could not be read or decompressed here (the kernel may still manage).
    #[error("its signature cannot be read: {0}")]
    Unreadable(String),
    /// A trailer the kernel refuses.
    #[error("{0}")]
    Malformed(String),
}

/// Reads the signature of the module file at `path` (decompressed first when its name says
/// so); `Ok(None)`: not signed.
pub fn read_signature(path: &Path) -> Result<Option<ModuleSignature>, SignatureError> {
    let io = |e: std::io::Error| SignatureError::Unreadable(e.to_string());
    let tail = match Compression::of(path) {
        Compression::None => {
            // Only the trailer is read: a module is often several MiB.
            let f = File::open(path).map_err(io)?;
            let len = f.metadata().map_err(io)?.len();
            let read = |from: u64| -> Result<Vec<u8>, SignatureError> {
                let mut buf = vec![0; (len - from) as usize];
                f.read_exact_at(&mut buf, from).map_err(io)?;
                Ok(buf)
            };
            let info_at = (MAGIC.len() + INFO_LEN) as u64;
            if len < info_at {
                return Ok(None);
            }
            let end = read(len - info_at)?;
            match sig_len(&end).map_err(SignatureError::Malformed)? {
                None => return Ok(None),
                Some(n) if n as u64 > len - info_at => {
                    return Err(SignatureError::Malformed(format!(
                        "its signature trailer claims {n} bytes, more than the file"
                    )))
                }
                Some(n) => read(len - info_at - n as u64)?,
            }
        }
        _ => decompress::read_module(path).map_err(io)?,
    };
    signature_of(&tail).map_err(SignatureError::Malformed)
}

/// The signature at the end of a (decompressed) module image.
pub fn signature_of(module: &[u8]) -> Result<Option<ModuleSignature>, String> {
    let info_at = MAGIC.len() + INFO_LEN;
    if module.len() < info_at {
        return Ok(None);
    }
    let Some(n) = sig_len(&module[module.len() - info_at..])? else {
        return Ok(None);
    };
    let body = module.len() - info_at;
    if n > body {
        return Err(format!(
            "its signature trailer claims {n} bytes, more than the file"
        ));
    }
    let signers = pkcs7_signers(&module[body - n..body])
        .map_err(|e| format!("its PKCS#7 signature cannot be read: {e}"))?;
    Ok(Some(ModuleSignature { signers }))
}

/// From `struct module_signature` and the magic: the PKCS#7 length, `None` without magic.
fn sig_len(end: &[u8]) -> Result<Option<usize>, String> {
    let (info, magic) = end.split_at(INFO_LEN);
    if magic != MAGIC {
        return Ok(None);
    }
    if info[2] != ID_PKCS7 {
        return Err(format!(
            "its signature is not PKCS#7 (id_type {}), which the kernel refuses",
            info[2]
        ));
    }
    if info[..2].iter().chain(&info[3..8]).any(|&b| b != 0) {
        return Err(
            "its signature trailer has non-zero parameter fields, which the kernel refuses".into(),
        );
    }
    Ok(Some(
        u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize,
    ))
}

/// Without the 0 byte DER puts before a serial whose high bit is set.
fn trim_sign_byte(b: &[u8]) -> &[u8] {
    match b {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => b,
    }
}

/// One DER (or BER, as the kernel's decoder accepts) element.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
}

/// Reads the element at the start of `data`; returns it and what follows it.
fn tlv(data: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
    let short = || "truncated".to_owned();
    let (&tag, rest) = data.split_first().ok_or_else(short)?;
    if tag & 0x1f == 0x1f {
        return Err(format!("multi-byte tag {tag:#x}"));
    }
    let (&first, rest) = rest.split_first().ok_or_else(short)?;
    let len = match first {
        0..=0x7f => first as usize,
        0x80 => {
            // Indefinite length (BER, constructed only): elements up to end-of-contents.
            if tag & 0x20 == 0 {
                return Err("indefinite length on a primitive element".into());
            }
            let mut inner = rest;
            while !inner.starts_with(&[0, 0]) {
                inner = tlv(inner)?.1;
            }
            let n = rest.len() - inner.len();
            return Ok((
                Tlv {
                    tag,
                    content: &rest[..n],
                },
                &inner[2..],
            ));
        }
        0x81..=0x84 => {
            let k = (first & 0x7f) as usize;
            let bytes = rest.get(..k).ok_or_else(short)?;
            let n = bytes.iter().fold(0usize, |a, &b| (a << 8) | b as usize);
            return take(tag, &rest[k..], n);
        }
        _ => return Err(format!("length of {} bytes", first & 0x7f)),
    };
    take(tag, rest, len)
}

fn take(tag: u8, rest: &[u8], n: usize) -> Result<(Tlv<'_>, &[u8]), String> {
    if n > rest.len() {
        return Err(format!(
            "element {tag:#x} of {n} bytes, {} left",
            rest.len()
        ));
    }
    Ok((
        Tlv {
            tag,
            content: &rest[..n],
        },
        &rest[n..],
    ))
}

/// The elements inside a constructed element's content.
fn children(content: &[u8]) -> Result<Vec<Tlv<'_>>, String> {
    let mut out = vec![];
    let mut rest = content;
    while !rest.is_empty() {
        let (t, r) = tlv(rest)?;
        out.push(t);
        rest = r;
    }
    Ok(out)
}

fn expect<'a>(t: Tlv<'a>, tag: u8, what: &str) -> Result<&'a [u8], String> {
    if t.tag != tag {
        return Err(format!("{what}: tag {:#x}, expected {tag:#x}", t.tag));
    }
    Ok(t.content)
}

/// The signers of a PKCS#7 `ContentInfo` holding `SignedData` (RFC 2315 / RFC 5652).
fn pkcs7_signers(der: &[u8]) -> Result<Vec<Signer>, String> {
    let (ci, _) = tlv(der)?;
    let ci = children(expect(ci, 0x30, "ContentInfo")?)?;
    let [oid, content, ..] = ci[..] else {
        return Err("ContentInfo is too short".into());
    };
    if expect(oid, 0x06, "contentType")? != OID_SIGNED_DATA {
        return Err("the content is not signedData".into());
    }
    let (sd, _) = tlv(expect(content, 0xa0, "content")?)?;
    let sd = children(expect(sd, 0x30, "SignedData")?)?;
    // version, digestAlgorithms, contentInfo, [0] certificates, [1] crls, signerInfos.
    let infos = sd
        .iter()
        .skip(3)
        .find(|t| t.tag == 0x31)
        .ok_or("SignedData has no signerInfos")?;
    let signers = children(infos.content)?
        .into_iter()
        .map(signer_of)
        .collect::<Result<Vec<_>, _>>()?;
    if signers.is_empty() {
        return Err("SignedData has no signer".into());
    }
    Ok(signers)
}

/// The `sid` of one `SignerInfo`.
fn signer_of(si: Tlv<'_>) -> Result<Signer, String> {
    let si = children(expect(si, 0x30, "SignerInfo")?)?;
    let sid = *si.get(1).ok_or("SignerInfo has no sid")?;
    match sid.tag {
        0x80 => Ok(Signer::KeyId(sid.content.to_vec())),
        // A constructed [0] around the OCTET STRING (BER writers).
        0xa0 => Ok(Signer::KeyId(
            expect(tlv(sid.content)?.0, 0x04, "subjectKeyIdentifier")?.to_vec(),
        )),
        0x30 => {
            let parts = children(sid.content)?;
            let [issuer, serial, ..] = parts[..] else {
                return Err("issuerAndSerialNumber is too short".into());
            };
            let names = name_parts(expect(issuer, 0x30, "issuer")?)?;
            Ok(Signer::IssuerSerial {
                issuer_cn: names.cn.clone().unwrap_or_default(),
                issuer_name: names.fabricated(),
                serial: expect(serial, 0x02, "serialNumber")?.to_vec(),
            })
        }
        t => Err(format!("SignerInfo sid has tag {t:#x}")),
    }
}

/// The name attributes the kernel uses to describe a certificate.
#[derive(Debug, Default)]
struct NameParts {
    cn: Option<String>,
    o: Option<String>,
    email: Option<String>,
}

impl NameParts {
    /// The kernel's `x509_fabricate_name`: CN and O when both are there (only CN when it
    /// starts with O, or both start with the same 7 bytes), else CN, O or the e-mail.
    fn fabricated(&self) -> String {
        match (&self.cn, &self.o, &self.email) {
            (Some(cn), Some(o), _) => {
                let (c, ob) = (cn.as_bytes(), o.as_bytes());
                if c.starts_with(ob) || (c.len() >= 7 && ob.len() >= 7 && c[..7] == ob[..7]) {
                    cn.clone()
                } else {
                    format!("{o}: {cn}")
                }
            }
            (Some(cn), None, _) => cn.clone(),
            (None, Some(o), _) => o.clone(),
            (None, None, Some(e)) => e.clone(),
            (None, None, None) => String::new(),
        }
    }
}

/// CN, O and e-mail of an X.501 `Name` (the last of each wins, as in the kernel).
fn name_parts(name: &[u8]) -> Result<NameParts, String> {
    let mut p = NameParts::default();
    for rdn in children(name)? {
        for atv in children(expect(rdn, 0x31, "RelativeDistinguishedName")?)? {
            let atv = children(expect(atv, 0x30, "AttributeTypeAndValue")?)?;
            let [oid, value, ..] = atv[..] else {
                return Err("AttributeTypeAndValue is too short".into());
            };
            let text = String::from_utf8_lossy(value.content).into_owned();
            match expect(oid, 0x06, "attribute type")? {
                OID_CN => p.cn = Some(text),
                OID_O => p.o = Some(text),
                OID_EMAIL => p.email = Some(text),
                _ => {}
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// The signature trailer of Debian's e1000.ko of linux-image-6.1.0-57-amd64 (the bytes
    /// after the module's ELF image). `modinfo` of the whole module says: signer "Build
    /// time autogenerated kernel key", sig_key 5E:E1:13:31:14:29:93:A9:9C:D5:03:5B:98:53:
    /// 48:74:66:1B:DE:E5.
    const DEBIAN_E1000_SIG: &[u8] = include_bytes!("../tests/fixtures/debian-6.1.0-57-e1000.sig");

    /// A module image with the signature of Debian's e1000.
    pub(crate) fn debian_e1000() -> Vec<u8> {
        module_with(DEBIAN_E1000_SIG)
    }

    fn module_with(sig: &[u8]) -> Vec<u8> {
        let mut m = crate::testutil::fake_ko(&[("name", "x")]);
        m.extend_from_slice(sig);
        m
    }

    #[test]
    fn reads_a_debian_signed_module() {
        let sig = signature_of(&module_with(DEBIAN_E1000_SIG))
            .unwrap()
            .unwrap();
        assert_eq!(sig.signers.len(), 1);
        let Signer::IssuerSerial {
            issuer_cn,
            issuer_name,
            ..
        } = &sig.signers[0]
        else {
            panic!("{sig:?}")
        };
        assert_eq!(issuer_cn, "Build time autogenerated kernel key");
        assert_eq!(issuer_name, "Build time autogenerated kernel key");
        assert_eq!(
            sig.signers[0].key_id(),
            "5E:E1:13:31:14:29:93:A9:9C:D5:03:5B:98:53:48:74:66:1B:DE:E5"
        );
    }

    #[test]
    fn unsigned_and_broken_trailers() {
        let plain = crate::testutil::fake_ko(&[("name", "x")]);
        assert_eq!(signature_of(&plain).unwrap(), None);
        assert_eq!(signature_of(b"").unwrap(), None);
        // Not PKCS#7.
        let mut m = module_with(DEBIAN_E1000_SIG);
        let at = m.len() - MAGIC.len() - INFO_LEN + 2;
        m[at] = 1;
        let e = signature_of(&m).unwrap_err();
        assert!(e.contains("not PKCS#7"), "{e}");
        // A length past the start.
        let mut m = module_with(DEBIAN_E1000_SIG);
        let at = m.len() - MAGIC.len() - 4;
        m[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(signature_of(&m).unwrap_err().contains("more than the file"));
        // A PKCS#7 cut short: every truncation is an error, none a panic.
        let n = DEBIAN_E1000_SIG.len() - MAGIC.len() - INFO_LEN;
        for cut in [1, 10, 100, n - 1] {
            let mut sig = DEBIAN_E1000_SIG[cut..n].to_vec();
            sig.extend_from_slice(&DEBIAN_E1000_SIG[n..n + 8]);
            sig.extend_from_slice(&((n - cut) as u32).to_be_bytes());
            sig.extend_from_slice(MAGIC);
            assert!(signature_of(&module_with(&sig)).is_err(), "cut {cut}");
        }
        // Any byte flipped: an answer or an error, never a panic.
        for i in 0..n {
            let mut sig = DEBIAN_E1000_SIG.to_vec();
            sig[i] ^= 0xa5;
            let _ = signature_of(&module_with(&sig));
        }
    }

    #[test]
    fn the_kernels_name_for_a_certificate() {
        let p = |cn: Option<&str>, o: Option<&str>, e: Option<&str>| NameParts {
            cn: cn.map(Into::into),
            o: o.map(Into::into),
            email: e.map(Into::into),
        };
        assert_eq!(p(Some("CN"), None, None).fabricated(), "CN");
        assert_eq!(
            p(Some("Glacier signing key"), Some("Magrathea"), Some("a@b")).fabricated(),
            "Magrathea: Glacier signing key"
        );
        assert_eq!(
            p(
                Some("Red Hat Enterprise Linux kernel signing key"),
                Some("Red Hat"),
                None
            )
            .fabricated(),
            "Red Hat Enterprise Linux kernel signing key"
        );
        assert_eq!(
            p(
                Some("Debian Secure Boot Signer"),
                Some("Debian Project"),
                None
            )
            .fabricated(),
            "Debian Secure Boot Signer"
        );
        assert_eq!(p(None, Some("O"), Some("e")).fabricated(), "O");
        assert_eq!(p(None, None, Some("e")).fabricated(), "e");
    }

    /// sign-file of the Debian kernel build tree, when installed (linux-kbuild-6.1).
    pub(crate) fn sign_file() -> std::path::PathBuf {
        for pattern in ["/usr/lib", "/usr/src"] {
            let Ok(dirs) = std::fs::read_dir(pattern) else {
                continue;
            };
            let mut found: Vec<_> = dirs
                .flatten()
                .map(|d| d.path().join("scripts/sign-file"))
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            if let Some(p) = found.pop() {
                return p;
            }
        }
        panic!("no scripts/sign-file under /usr/lib/linux-kbuild-* or /usr/src/linux-headers-*: run hack/install-deps (linux-kbuild-6.1)");
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A self-signed key and certificate (DER) made by openssl in `dir`.
    pub(crate) fn make_key(
        dir: &Path,
        name: &str,
        subject: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = dir.join(format!("{name}.key"));
        let crt = dir.join(format!("{name}.der"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-outform", "DER",
                "-subj", subject, "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&crt));
        (key, crt)
    }

    /// `fields` of `modinfo`, the independent reader (kmod with OpenSSL).
    fn modinfo(path: &Path, field: &str) -> String {
        run(Command::new("modinfo").args(["-F", field]).arg(path))
            .trim()
            .to_owned()
    }

    #[test]
    fn signers_of_sign_file_as_modinfo_names_them() {
        let d = tempfile::tempdir().unwrap();
        let (key, crt) = make_key(d.path(), "k", "/O=Example Org/CN=kd1 test signing key");
        for (flags, ko) in [(&[][..], "a.ko"), (&["-k"][..], "b.ko")] {
            let p = d.path().join(ko);
            std::fs::write(
                &p,
                crate::testutil::fake_ko(&[("name", "a"), ("license", "GPL")]),
            )
            .unwrap();
            run(Command::new(sign_file())
                .args(flags)
                .arg("sha256")
                .arg(&key)
                .arg(&crt)
                .arg(&p));
            let sig = read_signature(&p).unwrap().expect("signed");
            let s = &sig.signers[0];
            match s {
                Signer::IssuerSerial {
                    issuer_cn,
                    issuer_name,
                    ..
                } => {
                    assert!(flags.is_empty());
                    assert_eq!(s.key_id(), modinfo(&p, "sig_key"));
                    assert_eq!(issuer_cn, &modinfo(&p, "signer"));
                    assert_eq!(issuer_name, "Example Org: kd1 test signing key");
                }
                Signer::KeyId(id) => {
                    // modinfo (kmod 30's PKCS#7 reading) shows no key id for this form.
                    assert_eq!(flags, ["-k"]);
                    // The certificate's subjectKeyIdentifier, as openssl prints it.
                    let text = run(Command::new("openssl")
                        .args([
                            "x509",
                            "-inform",
                            "DER",
                            "-noout",
                            "-ext",
                            "subjectKeyIdentifier",
                            "-in",
                        ])
                        .arg(&crt));
                    let want = text
                        .lines()
                        .nth(1)
                        .unwrap()
                        .trim()
                        .replace(':', "")
                        .to_lowercase();
                    let got: String = id.iter().map(|b| format!("{b:02x}")).collect();
                    assert_eq!(got, want);
                }
            }
            // Compressed, the same signature is found after decompression.
            let raw = std::fs::read(&p).unwrap();
            let xz = d.path().join(format!("{ko}.xz"));
            std::fs::write(&xz, crate::testutil::xz(&raw)).unwrap();
            assert_eq!(read_signature(&xz).unwrap(), Some(sig.clone()));
            let zst = d.path().join(format!("{ko}.zst"));
            std::fs::write(&zst, crate::testutil::zstd(&raw)).unwrap();
            assert_eq!(read_signature(&zst).unwrap(), Some(sig));
        }
        let plain = d.path().join("plain.ko");
        std::fs::write(&plain, crate::testutil::fake_ko(&[("name", "p")])).unwrap();
        assert_eq!(read_signature(&plain).unwrap(), None);
        assert_eq!(modinfo(&plain, "signer"), "");
    }
}
