// SPDX-License-Identifier: Apache-2.0
//! Hand-built layers, hostile ones included. The tar crate's builder refuses `..` and
//! absolute names, so headers are written byte by byte here.

use std::io::Write;

use super::*;

const K: &str = "6.1.0-27-amd64";

#[derive(Clone, Copy)]
enum Kind {
    File,
    Dir,
    Sym,
    Hard,
    Char,
}

struct Layer(Vec<u8>);

impl Layer {
    fn new() -> Self {
        Self(vec![])
    }

    fn add(mut self, kind: Kind, name: &str, data: &[u8], link: &str) -> Self {
        let mut h = tar::Header::new_old();
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_mode(0o4755);
        h.set_size(data.len() as u64);
        h.set_entry_type(match kind {
            Kind::File => tar::EntryType::Regular,
            Kind::Dir => tar::EntryType::Directory,
            Kind::Sym => tar::EntryType::Symlink,
            Kind::Hard => tar::EntryType::Link,
            Kind::Char => tar::EntryType::Char,
        });
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.add(Kind::File, name, data, "")
    }

    fn tar(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }

    fn gz(self) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        e.write_all(&self.tar()).unwrap();
        e.finish().unwrap()
    }
}

fn m(p: &str) -> String {
    format!("opt/lib/modules/{K}/{p}")
}

struct Fixture {
    dir: tempfile::TempDir,
    builder: Option<TreeBuilder>,
}

fn fixture(limits: ExtractLimits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sel = Selection::new(
        &AbsPath::new("/opt").unwrap(),
        &KernelRelease::new(K).unwrap(),
        Some(&AbsPath::new("/firmware").unwrap()),
    );
    let builder = TreeBuilder::new(dir.path().join("staging"), sel, limits).unwrap();
    Fixture {
        dir,
        builder: Some(builder),
    }
}

impl Fixture {
    fn apply(&mut self, layer: &[u8]) -> Result<(), ExtractError> {
        self.builder
            .as_mut()
            .unwrap()
            .apply_layer(layer, "sha256:test")
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("staging").join(rel)
    }
    fn refused(&mut self, layer: &[u8], entry: &str, why: &str) {
        let e = self.apply(layer).unwrap_err().to_string();
        assert!(e.contains(entry) && e.contains(why), "{e}");
        // Nothing beside the staging directory.
        let names: Vec<_> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["staging"]);
    }
}

#[test]
fn extracts_only_the_selection() {
    let mut f = fixture(ExtractLimits::default());
    let layer = Layer::new()
        .add(Kind::Dir, "usr/", b"", "")
        .file("usr/bin/sh", b"shell")
        .file(&m("extra/e1000.ko"), b"ELF")
        .file(&m("modules.dep"), b"extra/e1000.ko:\n")
        .add(Kind::Sym, &m("extra/alias.ko"), b"", "e1000.ko")
        .add(
            Kind::Sym,
            &m("extra/abs.ko"),
            b"",
            &format!("/opt/lib/modules/{K}/extra/e1000.ko"),
        )
        .add(Kind::Hard, &m("extra/hard.ko"), b"", &m("extra/e1000.ko"))
        .add(Kind::Sym, &m("build"), b"", "/usr/src/linux-headers")
        .file("firmware/intel/fw.bin", b"FW")
        .add(Kind::Sym, "firmware/intel/link.bin", b"", "../intel/fw.bin")
        .gz();
    f.apply(&layer).unwrap();
    let stats = f.builder.take().unwrap().finish().unwrap();
    assert_eq!(
        stats,
        TreeStats {
            files: 3,
            bytes: 3 + 16 + 2
        }
    );
    assert_eq!(fs::read(f.path("modules/extra/alias.ko")).unwrap(), b"ELF");
    assert_eq!(
        fs::read_link(f.path("modules/extra/abs.ko")).unwrap(),
        Path::new("../extra/e1000.ko")
    );
    assert_eq!(fs::read(f.path("modules/extra/hard.ko")).unwrap(), b"ELF");
    assert_eq!(fs::read(f.path("firmware/intel/link.bin")).unwrap(), b"FW");
    assert!(!f.path("modules/build").exists());
    assert!(!f.path("usr").exists());
    // setuid dropped.
    let mode = fs::metadata(f.path("modules/extra/e1000.ko"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
}

#[test]
fn refuses_traversal_and_absolute_paths() {
    let mut f = fixture(ExtractLimits::default());
    f.refused(
        &Layer::new().file("opt/../../etc/passwd", b"x").tar(),
        "opt/../../etc/passwd",
        "traversal",
    );
    f.refused(
        &Layer::new().file("/etc/passwd", b"x").tar(),
        "/etc/passwd",
        "absolute",
    );
}

#[test]
fn refuses_escaping_symlinks() {
    let mut f = fixture(ExtractLimits::default());
    f.refused(
        &Layer::new()
            .add(Kind::Sym, &m("x.ko"), b"", "../../../../../etc/shadow")
            .tar(),
        "x.ko",
        "climbs out",
    );
    f.refused(
        &Layer::new()
            .add(Kind::Sym, &m("x.ko"), b"", "/etc/shadow")
            .tar(),
        "x.ko",
        "outside",
    );
    f.refused(
        &Layer::new()
            .add(Kind::Sym, &m("a/x.ko"), b"", "b/../../..")
            .tar(),
        "x.ko",
        "after a name",
    );
    f.refused(
        &Layer::new()
            .add(Kind::Sym, "firmware/x", b"", "../modules")
            .tar(),
        "firmware/x",
        "climbs out",
    );
}

#[test]
fn refuses_writing_through_a_symlink() {
    let mut f = fixture(ExtractLimits::default());
    let layer = Layer::new()
        .add(Kind::Sym, &m("d"), b"", ".")
        .file(&m("d/x.ko"), b"x")
        .tar();
    f.refused(&layer, "d/x.ko", "not a directory");
}

#[test]
fn refuses_hardlinks_out_and_devices() {
    let mut f = fixture(ExtractLimits::default());
    f.refused(
        &Layer::new()
            .add(Kind::Hard, &m("x.ko"), b"", "etc/shadow")
            .tar(),
        "x.ko",
        "outside",
    );
    f.refused(
        &Layer::new()
            .add(Kind::Hard, &m("x.ko"), b"", "firmware/a")
            .tar(),
        "x.ko",
        "outside",
    );
    f.refused(
        &Layer::new()
            .add(Kind::Hard, &m("x.ko"), b"", &m("none"))
            .tar(),
        "x.ko",
        "not a file",
    );
    f.refused(
        &Layer::new().add(Kind::Char, &m("null"), b"", "").tar(),
        "null",
        "device",
    );
    // A device outside the selection is ignored.
    f.apply(&Layer::new().add(Kind::Char, "dev/null", b"", "").tar())
        .unwrap();
}

#[test]
fn refuses_oversize_entries_and_bombs() {
    let limits = ExtractLimits {
        max_entry: 1000,
        max_tree: 1500,
        max_layer: 1 << 20,
        max_entries: 100,
    };
    let mut f = fixture(limits);
    let zeros = vec![0u8; 4 << 20];
    f.refused(
        &Layer::new().file(&m("big.ko"), &zeros[..2000]).gz(),
        "big.ko",
        "entry limit",
    );
    f.refused(
        &Layer::new()
            .file(&m("a.ko"), &zeros[..900])
            .file(&m("b.ko"), &zeros[..900])
            .gz(),
        "b.ko",
        "tree would exceed",
    );
    // 4 MiB of zeros outside the selection: a few KiB compressed, over the layer limit.
    let bomb = Layer::new().file("usr/zeros", &zeros).gz();
    assert!(bomb.len() < 20_000);
    let e = f.apply(&bomb).unwrap_err().to_string();
    assert!(e.contains("decompression bomb"), "{e}");
    let mut many = Layer::new();
    for i in 0..101 {
        many = many.file(&format!("usr/{i}"), b"");
    }
    let e = f.apply(&many.tar()).unwrap_err().to_string();
    assert!(e.contains("more than 100 entries"), "{e}");
}

#[test]
fn whiteouts_and_opaque_dirs() {
    let mut f = fixture(ExtractLimits::default());
    f.apply(
        &Layer::new()
            .file(&m("a.ko"), b"a")
            .file(&m("b.ko"), b"b")
            .file(&m("sub/c.ko"), b"c")
            .file("firmware/old.bin", b"o")
            .tar(),
    )
    .unwrap();
    f.apply(
        &Layer::new()
            .file(&m(".wh.a.ko"), b"")
            .file(&m("sub/new.ko"), b"n")
            .file(&m("sub/.wh..wh..opq"), b"")
            .file("firmware/new.bin", b"n")
            .file(".wh.firmware", b"")
            .tar(),
    )
    .unwrap();
    assert!(!f.path("modules/a.ko").exists());
    assert!(f.path("modules/b.ko").exists());
    assert!(!f.path("modules/sub/c.ko").exists());
    assert!(f.path("modules/sub/new.ko").exists());
    // Whiteout of the firmware root itself, after its new content in the same layer: overlay
    // applies whiteouts to lower layers only, but a tar has no order guarantee, so the tree
    // is simply gone and finish() says so.
    let e = f.builder.take().unwrap().finish().unwrap_err().to_string();
    assert!(e.contains("/firmware"), "{e}");
}

#[test]
fn zstd_layers_and_missing_content() {
    let mut f = fixture(ExtractLimits::default());
    let tar = Layer::new().file(&m("z.ko"), b"zstd").tar();
    let mut z = ruzstd::encoding::compress_to_vec(
        &tar[..tar.len() / 2],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    // Two frames, as parallel compressors write.
    z.extend(ruzstd::encoding::compress_to_vec(
        &tar[tar.len() / 2..],
        ruzstd::encoding::CompressionLevel::Fastest,
    ));
    f.apply(&z).unwrap();
    assert_eq!(fs::read(f.path("modules/z.ko")).unwrap(), b"zstd");
    let e = f.builder.take().unwrap().finish().unwrap_err().to_string();
    assert!(e.contains("firmwarePath"), "{e}");

    let mut f = fixture(ExtractLimits::default());
    f.apply(&Layer::new().file("opt/lib/modules/5.0/x.ko", b"x").tar())
        .unwrap();
    let e = f.builder.take().unwrap().finish().unwrap_err().to_string();
    assert!(
        e.contains(&format!("/opt/lib/modules/{K}")) && e.contains("dirName"),
        "{e}"
    );
    let mut f = fixture(ExtractLimits::default());
    let e = f
        .apply(b"this is not a tar archive, not even close.........")
        .unwrap_err();
    assert!(matches!(e, ExtractError::Format { .. }), "{e}");
}

#[test]
fn long_names_from_gnu_and_pax_headers() {
    let deep = format!(
        "kernel/drivers/net/ethernet/intel/{}/ice.ko",
        "sub/".repeat(30)
    );
    let name = m(&deep);
    assert!(name.len() > 100);
    // GNU long name (tar::Builder's default for long paths).
    let mut b = tar::Builder::new(vec![]);
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, &name, &b"ice"[..]).unwrap();
    // PAX path record, as Go's archive/tar (buildah, docker) writes.
    let pax_name = m("pax/very/long/name.ko");
    let record = format!("path={pax_name}\n");
    let rec = format!("{} {record}", record.len() + 3);
    assert_eq!(rec.len(), record.len() + 3);
    let mut ph = tar::Header::new_ustar();
    ph.set_entry_type(tar::EntryType::XHeader);
    ph.set_size(rec.len() as u64);
    ph.set_path("PaxHeaders/x").unwrap();
    ph.set_cksum();
    b.append(&ph, rec.as_bytes()).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("short").unwrap();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"pax"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let mut f = fixture(ExtractLimits::default());
    f.apply(&tar).unwrap();
    assert_eq!(
        fs::read(f.path(&format!("modules/{deep}"))).unwrap(),
        b"ice"
    );
    assert_eq!(
        fs::read(f.path("modules/pax/very/long/name.ko")).unwrap(),
        b"pax"
    );
}

/// Errors are fine, panics are bugs, and nothing lands outside the staging directory:
/// thousands of mutated layers (bit flips, truncations, garbage headers).
#[test]
fn mutated_layers_never_panic_or_escape() {
    let base = Layer::new()
        .add(Kind::Dir, &m("extra/"), b"", "")
        .file(&m("extra/e1000.ko"), b"ELF module bytes")
        .add(Kind::Sym, &m("extra/alias.ko"), b"", "e1000.ko")
        .add(Kind::Hard, &m("extra/hard.ko"), b"", &m("extra/e1000.ko"))
        .file("firmware/fw.bin", b"FW")
        .file(&m(".wh.gone.ko"), b"")
        .tar();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        e.write_all(&base).unwrap();
        e.finish().unwrap()
    };
    let mut seed = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..3000 {
        let src = if round % 3 == 0 { &gz } else { &base };
        let mut data = src.clone();
        match next() % 4 {
            0 => data.truncate((next() as usize) % data.len()),
            1 => {
                for _ in 0..1 + next() % 8 {
                    let i = (next() as usize) % data.len();
                    data[i] ^= 1 << (next() % 8);
                }
            }
            2 => {
                // A byte of a header field set to an interesting value.
                let i = (next() as usize) % 512.min(data.len());
                data[i] = [0, b'/', b'.', 0xff, b'7', b'5'][(next() % 6) as usize];
            }
            _ => {
                let i = (next() as usize) % data.len();
                data.splice(i..i, std::iter::repeat_n(b'.', (next() % 600) as usize));
            }
        }
        let mut f = fixture(ExtractLimits {
            max_entry: 1 << 20,
            max_tree: 4 << 20,
            max_layer: 64 << 20,
            max_entries: 1000,
        });
        let _ = f.apply(&data);
        let names: Vec<_> = fs::read_dir(f.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["staging"], "round {round}");
        // Every symlink left in the tree stays inside it.
        let root = f.path("");
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let md = fs::symlink_metadata(&p).unwrap();
                if md.is_dir() {
                    stack.push(p);
                } else if md.file_type().is_symlink() {
                    let target = fs::read_link(&p).unwrap();
                    assert!(
                        target.is_relative(),
                        "round {round}: {} -> {}",
                        p.display(),
                        target.display()
                    );
                    let depth = p
                        .parent()
                        .unwrap()
                        .strip_prefix(&root)
                        .unwrap()
                        .components()
                        .count();
                    let ups = target
                        .components()
                        .filter(|c| matches!(c, std::path::Component::ParentDir))
                        .count();
                    assert!(
                        ups < depth,
                        "round {round}: {} -> {}",
                        p.display(),
                        target.display()
                    );
                }
            }
        }
    }
}
