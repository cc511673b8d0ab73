// SPDX-License-Identifier: Apache-2.0
//! The Ignition config: the node config file, the units and, for an embedded delivery,
//! the node binaries.
//!
//! It is built with ignition-config's 3.2.0 types, the oldest version emitted: every
//! field used here means the same in 3.3.0 and 3.4.0, so a newer version is the same
//! document relabelled, then parsed back as that version to prove it (no unknown keys).

use base64::Engine;
use ignition_config::v3_2 as ign;

use crate::{
    bundle::NodeEntry, image_delivery, node_binaries::gzip_data_url, node_binaries::EmbeddedBinary,
    units, Bundle, Day1Config, Delivery, Error,
};

/// Ignition spec versions mcgen emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IgnitionVersion {
    /// 3.2.0: every supported OpenShift release's MCO takes it.
    #[default]
    #[value(name = "3.2.0")]
    V3_2,
    /// 3.3.0
    #[value(name = "3.3.0")]
    V3_3,
    /// 3.4.0 (OpenShift 4.14 and later).
    #[value(name = "3.4.0")]
    V3_4,
}

impl IgnitionVersion {
    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            IgnitionVersion::V3_2 => "3.2.0",
            IgnitionVersion::V3_3 => "3.3.0",
            IgnitionVersion::V3_4 => "3.4.0",
        }
    }
}

/// Path of a config file on the node.
pub fn config_path(config: &Day1Config) -> String {
    format!("{}/{}.json", kmod_day1_contract::CONFIG_DIR, config.name)
}

fn file(path: String, mode: i64, source: String, compression: Option<&str>) -> ign::File {
    let mut f = ign::File::new(path);
    f.mode = Some(mode);
    f.overwrite = Some(true);
    f.contents = Some(ign::Resource {
        source: Some(source),
        compression: compression.map(str::to_owned),
        ..Default::default()
    });
    f
}

/// Builds the Ignition config as JSON, with the store content of `bundle` when given.
pub fn ignition_config(
    config: &Day1Config,
    delivery: &Delivery,
    binaries: &[EmbeddedBinary],
    bundle: Option<&Bundle>,
    version: IgnitionVersion,
) -> Result<serde_json::Value, Error> {
    let config_json = config.node.to_json();
    let mut files = vec![file(
        config_path(config),
        0o644,
        format!(
            "data:;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(config_json.as_bytes())
        ),
        None,
    )];
    let dir = units::bin_dir(delivery);
    for b in binaries {
        files.push(file(
            format!("{dir}/{}", b.name),
            0o755,
            b.data_url.clone(),
            Some("gzip"),
        ));
    }
    if let Delivery::Image { .. } = delivery {
        let (url, _) = gzip_data_url(image_delivery::INSTALL_SCRIPT.as_bytes())
            .map_err(|e| Error::io("compressing the install script", e))?;
        files.push(file(
            image_delivery::INSTALL_SCRIPT_PATH.to_owned(),
            0o755,
            url,
            Some("gzip"),
        ));
    }
    let (mut directories, mut links) = (vec![], vec![]);
    for entry in bundle.map(Bundle::entries).unwrap_or_default() {
        match entry {
            NodeEntry::Dir { path, mode } => {
                let mut d = ign::Directory::new(path.clone());
                d.mode = Some(i64::from(*mode));
                directories.push(d);
            }
            NodeEntry::File { path, mode, data } => {
                // gzip only where it pays: a data URL's base64 is the same either way.
                let (gz, gz_len) =
                    gzip_data_url(data).map_err(|e| Error::io(format!("compressing {path}"), e))?;
                let (url, compression) = if gz_len < data.len() {
                    (gz, Some("gzip"))
                } else {
                    (
                        format!(
                            "data:;base64,{}",
                            base64::engine::general_purpose::STANDARD.encode(data)
                        ),
                        None,
                    )
                };
                files.push(file(path.clone(), i64::from(*mode), url, compression));
            }
            NodeEntry::Symlink { path, target } => {
                let mut l = ign::Link::new(path.clone(), target.clone());
                l.overwrite = Some(true);
                links.push(l);
            }
        }
    }
    let systemd_units = units::units(delivery)
        .into_iter()
        .map(|(name, contents)| {
            let mut u = ign::Unit::new(name.to_owned());
            u.enabled = Some(true);
            u.contents = Some(contents);
            u
        })
        .collect();
    let c = ign::Config {
        storage: Some(ign::Storage {
            files: Some(files),
            directories: (!directories.is_empty()).then_some(directories),
            links: (!links.is_empty()).then_some(links),
            ..Default::default()
        }),
        systemd: Some(ign::Systemd {
            units: Some(systemd_units),
        }),
        ..Default::default()
    };
    let mut value = serde_json::to_value(&c).expect("Ignition config serializes");
    strip_nulls(&mut value);
    value["ignition"]["version"] = version.as_str().into();
    check_parses(&value, version)?;
    Ok(value)
}

/// Removes `null` members: some generated types serialize unset fields as null, which
/// means the same to Ignition but is noise for the person reviewing the MachineConfig.
fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Parses `value` back as its version: no error, no warning (unknown key).
fn check_parses(value: &serde_json::Value, version: IgnitionVersion) -> Result<(), Error> {
    let text = value.to_string();
    let (_, warnings) = ignition_config::Config::parse_str(&text).map_err(|e| {
        Error::Invalid(format!(
            "the generated Ignition {} config does not parse back: {e}",
            version.as_str()
        ))
    })?;
    if let Some(w) = warnings.first() {
        return Err(Error::Invalid(format!(
            "the generated Ignition {} config has a field that version does not know: {w:?}",
            version.as_str()
        )));
    }
    Ok(())
}
