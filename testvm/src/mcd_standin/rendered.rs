// SPDX-License-Identifier: Apache-2.0
//! A rendered MachineConfig as MCD reads it, and the difference between two of them
//! (MCO's `reconcilable`, `CalculateConfigFileDiffs`, `GetChangedConfigUnitsByType`).

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

/// A MachineConfig (rendered or single) with the parts MCD acts on.
#[derive(Debug, Clone)]
pub struct RenderedConfig {
    /// `metadata.name`; empty for the empty config MCD compares a first update with.
    pub name: String,
    /// The whole object, stored as `/etc/machine-config-daemon/currentconfig`.
    pub raw: Value,
    /// `spec.config.storage.files`, keyed by path, each entry as written (for the diff).
    files: BTreeMap<String, Value>,
    /// `spec.config.systemd.units`, keyed by name.
    units: BTreeMap<String, Value>,
    /// `spec.config` itself, for the sections MCD refuses to change.
    ignition: Value,
}

/// One `storage.files` entry (Ignition 3.x), the fields MCD's `writeFiles` uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Absolute path on the node.
    pub path: String,
    /// Where the contents come from.
    #[serde(default)]
    pub contents: Resource,
    /// Mode bits (decimal in JSON); MCD's default is 0644.
    pub mode: Option<u32>,
}

/// An Ignition resource: a URL and its compression.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Resource {
    /// A `data:` URL (MCD decodes nothing else).
    pub source: Option<String>,
    /// `gzip` or nothing.
    pub compression: Option<String>,
}

/// One `systemd.units` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct UnitEntry {
    /// Unit name, e.g. `kmod-day1-load.service`.
    pub name: String,
    /// Unit file contents; none or empty: no file written.
    pub contents: Option<String>,
    /// `true`: `systemctl enable`; `false`: disable; unset: `systemctl preset`.
    pub enabled: Option<bool>,
    /// `true`: a symlink to `/dev/null`.
    pub mask: Option<bool>,
    /// Drop-ins under `<name>.d/`.
    #[serde(default)]
    pub dropins: Vec<Dropin>,
}

/// A unit drop-in.
#[derive(Debug, Clone, Deserialize)]
pub struct Dropin {
    /// File name, e.g. `10-console.conf`.
    pub name: String,
    /// Contents; empty: the drop-in is removed.
    pub contents: Option<String>,
}

impl RenderedConfig {
    /// The empty config a node without one is compared with (MCO's `canonicalizeEmptyMC`).
    pub fn empty() -> Self {
        Self::from_value(serde_json::json!({
            "apiVersion": "machineconfiguration.openshift.io/v1",
            "kind": "MachineConfig",
            "metadata": {"name": ""},
            "spec": {"config": {"ignition": {"version": "3.2.0"}}}
        }))
        .expect("the empty config parses")
    }

    /// Parses a MachineConfig in YAML or JSON (the first document of a YAML stream that
    /// holds one, comments allowed, as mcgen writes it).
    pub fn parse(text: &str) -> Result<Self> {
        let raw: Value = serde_norway::from_str(text)
            .context("parsing a MachineConfig (YAML or JSON with kind MachineConfig)")?;
        Self::from_value(raw)
    }

    fn from_value(mut raw: Value) -> Result<Self> {
        strip_nulls(&mut raw);
        if raw["kind"] != "MachineConfig" {
            bail!("not a MachineConfig: kind is {}", raw["kind"]);
        }
        let name = raw["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let ignition = raw["spec"]["config"].clone();
        let mut files = BTreeMap::new();
        for f in list(&ignition["storage"]["files"]) {
            let entry: FileEntry = serde_json::from_value(f.clone())
                .with_context(|| format!("reading a file entry of {name}: {f}"))?;
            check_path(&entry.path)?;
            files.insert(entry.path, f.clone());
        }
        let mut units = BTreeMap::new();
        for u in list(&ignition["systemd"]["units"]) {
            let entry: UnitEntry = serde_json::from_value(u.clone())
                .with_context(|| format!("reading a unit entry of {name}: {u}"))?;
            check_unit_name(&entry.name)?;
            for d in &entry.dropins {
                check_unit_name(&d.name)?;
            }
            units.insert(entry.name, u.clone());
        }
        Ok(Self {
            name,
            raw,
            files,
            units,
            ignition,
        })
    }

    /// The file entries, by path.
    pub fn files(&self) -> impl Iterator<Item = FileEntry> + '_ {
        self.files
            .values()
            .map(|v| serde_json::from_value(v.clone()).expect("checked in parse"))
    }

    /// The file entry at `path`.
    pub fn file(&self, path: &str) -> Option<FileEntry> {
        self.files
            .get(path)
            .map(|v| serde_json::from_value(v.clone()).expect("checked in parse"))
    }

    /// The unit entries, by name.
    pub fn units(&self) -> impl Iterator<Item = UnitEntry> + '_ {
        self.units
            .values()
            .map(|v| serde_json::from_value(v.clone()).expect("checked in parse"))
    }

    fn unit(&self, name: &str) -> Option<UnitEntry> {
        self.units
            .get(name)
            .map(|v| serde_json::from_value(v.clone()).expect("checked in parse"))
    }

    fn spec(&self, key: &str) -> &Value {
        &self.raw["spec"][key]
    }
}

/// What changed between two configs (MCO's `machineConfigDiff` plus the changed paths and
/// unit names the disruption policy is looked up with).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigDiff {
    /// `spec.osImageURL` changed (an OS update: always a reboot).
    pub os_update: bool,
    /// `spec.kernelArguments` changed (always a reboot).
    pub kargs: bool,
    /// `spec.kernelType` changed (`""` is `default`; always a reboot).
    pub kernel_type: bool,
    /// `spec.extensions` changed (always a reboot).
    pub extensions: bool,
    /// Core's SSH keys or password hash changed (the `sshkey` policy applies).
    pub passwd: bool,
    /// Paths of files added, changed (any field of the entry) or removed.
    pub files: Vec<String>,
    /// Units added, changed (any field, drop-ins included) or removed.
    pub units: Vec<String>,
}

impl ConfigDiff {
    /// Whether the update needs a reboot whatever the disruption policy says.
    pub fn always_reboots(&self) -> bool {
        self.os_update || self.kargs || self.kernel_type || self.extensions
    }
}

/// Compares `old` with `new` as MCD's `reconcilable` does: the changes MCD refuses on a
/// running node are an error naming the section (MCD marks the node Unreconcilable).
pub fn reconcile(old: &RenderedConfig, new: &RenderedConfig) -> Result<ConfigDiff> {
    refuse_unreconcilable(old, new)
        .with_context(|| format!("can't reconcile config {} with {}", old.name, new.name))?;
    let kernel_type = |c: &RenderedConfig| match c.spec("kernelType").as_str() {
        None | Some("") => "default".to_owned(),
        Some(t) => t.to_owned(),
    };
    let changed = |a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>| -> Vec<String> {
        let mut keys: Vec<String> = a
            .keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    };
    Ok(ConfigDiff {
        os_update: old.spec("osImageURL") != new.spec("osImageURL"),
        kargs: !same(old.spec("kernelArguments"), new.spec("kernelArguments")),
        kernel_type: kernel_type(old) != kernel_type(new),
        extensions: !same(old.spec("extensions"), new.spec("extensions")),
        passwd: !same(&old.ignition["passwd"], &new.ignition["passwd"]),
        files: changed(&old.files, &new.files),
        units: changed(&old.units, &new.units),
    })
}

fn refuse_unreconcilable(old: &RenderedConfig, new: &RenderedConfig) -> Result<()> {
    let (o, n) = (&old.ignition, &new.ignition);
    let passwd = (&o["passwd"], &n["passwd"]);
    if !same(passwd.0, passwd.1) {
        if !same(&passwd.0["groups"], &passwd.1["groups"]) {
            bail!("ignition Passwd Groups section contains changes");
        }
        for user in list(&passwd.1["users"]) {
            let other_fields = user.as_object().is_some_and(|u| {
                u.keys()
                    .any(|k| !["name", "sshAuthorizedKeys", "passwordHash"].contains(&k.as_str()))
            });
            if user["name"] != "core" || other_fields {
                bail!("ignition passwd user section contains unsupported changes: user must be core and have 1 or more sshKeys");
            }
        }
    }
    if !same(&o["kernelArguments"], &n["kernelArguments"]) {
        bail!("ignition kargs section contains changes");
    }
    for section in ["disks", "filesystems", "raid", "directories"] {
        if !same(&o["storage"][section], &n["storage"][section]) {
            bail!("ignition {section} section contains changes");
        }
    }
    if !same(&o["storage"]["links"], &n["storage"]["links"])
        && !list(&n["storage"]["links"]).is_empty()
    {
        bail!("ignition links section contains changes");
    }
    for (path, f) in &new.files {
        if !list(&f["append"]).is_empty() {
            bail!("ignition file {path} includes append");
        }
    }
    if old.spec("fips").as_bool().unwrap_or(false) != new.spec("fips").as_bool().unwrap_or(false) {
        bail!("detected change to FIPS flag; refusing to modify FIPS on a running cluster");
    }
    Ok(())
}

impl RenderedConfig {
    /// The unit entry of a unit the diff names, from whichever config has it.
    pub fn unit_or(&self, other: &RenderedConfig, name: &str) -> Option<UnitEntry> {
        self.unit(name).or_else(|| other.unit(name))
    }

    /// Whether this config has a unit of that name.
    pub fn has_unit(&self, name: &str) -> bool {
        self.units.contains_key(name)
    }
}

/// Decodes an Ignition file's contents as MCD does (`DecodeIgnitionFileContents`): a
/// `data:` URL (base64 or percent-encoded), then gzip when `compression` says so. No
/// source is an empty file; other URL schemes are refused (MCD fetches nothing).
pub fn decode_contents(res: &Resource) -> Result<Vec<u8>> {
    let Some(source) = res.source.as_deref() else {
        return Ok(Vec::new());
    };
    let Some(rest) = source.strip_prefix("data:") else {
        bail!("contents source {source:.40} is not a data: URL (MCD only decodes data URLs)");
    };
    let (header, data) = rest
        .split_once(',')
        .context("a data: URL without a comma")?;
    let bytes = if header.ends_with(";base64") {
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("decoding the base64 of a data: URL")?
    } else {
        percent_decode(data)?
    };
    match res.compression.as_deref() {
        None | Some("") => Ok(bytes),
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(bytes.as_slice())
                .read_to_end(&mut out)
                .context("gunzipping file contents")?;
            Ok(out)
        }
        Some(other) => bail!("compression {other:?} is not one Ignition 3 knows (gzip)"),
    }
}

fn percent_decode(s: &str) -> Result<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .context("a truncated %XX escape in a data: URL")?;
            out.push(u8::from_str_radix(hex, 16).context("a bad %XX escape in a data: URL")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// A config file path must be absolute and stay under the root it is written to.
fn check_path(path: &str) -> Result<()> {
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        bail!("file path {path:?} is not absolute or climbs out with ..");
    }
    Ok(())
}

fn check_unit_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("unit or drop-in name {name:?} is not a file name");
    }
    Ok(())
}

/// Absent, null and empty compare equal, as Go's typed configs leave them.
fn same(a: &Value, b: &Value) -> bool {
    is_empty(a) && is_empty(b) || a == b
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|_, x| !x.is_null());
            o.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}
