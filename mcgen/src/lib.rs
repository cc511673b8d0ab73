// SPDX-License-Identifier: Apache-2.0
//! mcgen: generates what installs kmod-day1 on OpenShift / RHCOS nodes — a MachineConfig,
//! a raw Ignition config (installer time) or a Containerfile (RHCOS image mode) — from a
//! spec, from KMM's `BootModuleConfig` or from KMM's `day1-utility` flags.
//!
//! ```
//! use mcgen::{Day1Config, Generator, ModuleSetBuilder};
//!
//! let set = ModuleSetBuilder::new("ice")
//!     .image("quay.io/acme/ice-kmod")            // tagged with the node's kernel release
//!     .kernel_regexp(r"^5\.14\..*el9.*$", "quay.io/acme/ice-kmod:${KERNEL_FULL_VERSION}-v2")
//!     .module("ice", &["debug=1"])
//!     .remove_in_tree("ice")
//!     .firmware_path("/firmware")
//!     .build()
//!     .unwrap();
//! let config = Day1Config::new("99-worker-ice", "worker", vec![set]).unwrap();
//! let yaml = Generator::new(config).machine_config_yaml().unwrap();
//! assert!(yaml.contains("machineconfiguration.openshift.io/role: worker"));
//! ```

mod acm_policy;
mod bundle;
mod cli;
mod containerfile;
mod cpio;
mod disruption_policy;
mod error;
mod ignition;
mod image_delivery;
pub mod initramfs_content;
mod initrd;
mod install_time;
mod kmm;
mod kmm_migration;
mod machineconfig;
mod monitoring;
mod node_binaries;
mod node_image;
mod prestage;
mod spec;
mod units;

use std::path::PathBuf;

pub use acm_policy::{
    acm_policy_objects, acm_policy_yaml, content_hash, AcmPolicyOptions, PolicyContent,
    PolicyNames, Remediation, CONTENT_ANNOTATION,
};
pub use bundle::{Bundle, NodeEntry};
pub use cli::{run, Cli, OutputFormat};
pub use containerfile::containerfile;
pub use disruption_policy::{
    check_policy, disruption_policy, disruption_policy_yaml, field_manager, OnChange,
    PolicyEntries, MAX_ENTRIES,
};
pub use error::Error;
pub use ignition::{config_path, IgnitionVersion};
pub use image_delivery::{
    install_unit, NodeImage, INSTALL_SCRIPT, INSTALL_SCRIPT_PATH, INSTALL_UNIT_NAME,
    NODE_BINARIES_RECORD,
};
pub use kmm::{produce_machine_config, KmmArgs};
pub use kmm_migration::{migrate, Migration, Removal};
pub use machineconfig::MachineConfig;
pub use node_binaries::{embed_node_binaries, EmbeddedBinary};
pub use node_image::{
    read_static_binary, write_layout, ImageFile, ImageMeta, WrittenImage, IMAGE_BIN_DIR,
    IMAGE_SHELL,
};
pub use prestage::{prestage_objects, prestage_yaml, NodeSelector, AGENT_SCRIPT, NAMESPACE};
pub use spec::{parse_spec, Day1Config, ModuleSetBuilder, PoolName, API_VERSION, KIND};
pub use units::{LOAD_UNIT, NODE_BINARIES, PULL_SHUTDOWN_UNIT, PULL_UNIT};

/// Default limit on a MachineConfig's size: etcd stores objects up to 1.5 MiB and MCO
/// merges every MachineConfig of a pool into one rendered config.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// How the node binaries reach the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Inside the Ignition config, gzip-compressed, from this directory.
    Embedded {
        /// Directory holding `kmod-day1-load` and `kmod-day1-pull`.
        node_binaries: PathBuf,
    },
    /// In the OS image (see [`containerfile`]); the config carries units and config only.
    Layered,
    /// From the node image, pinned by digest: an install unit puts the binaries into
    /// `/usr/local/bin` with the node's podman once the network is up.
    Image {
        /// The node image (`make node-image`).
        node_image: NodeImage,
    },
}

/// Generates the outputs for one [`Day1Config`].
#[derive(Debug, Clone)]
pub struct Generator {
    config: Day1Config,
    delivery: Delivery,
    ignition_version: IgnitionVersion,
    max_bytes: usize,
    bundle: Option<Bundle>,
}

impl Generator {
    /// A generator with the defaults: layered delivery, Ignition 3.2.0, 1 MiB limit.
    pub fn new(config: Day1Config) -> Self {
        Self {
            config,
            delivery: Delivery::Layered,
            ignition_version: IgnitionVersion::default(),
            max_bytes: DEFAULT_MAX_BYTES,
            bundle: None,
        }
    }

    /// Carries a prepared store ([`Bundle`]) in the config.
    pub fn bundle(mut self, bundle: Bundle) -> Self {
        self.bundle = Some(bundle);
        self
    }

    /// Sets how the node binaries are delivered.
    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// Sets the Ignition spec version.
    pub fn ignition_version(mut self, version: IgnitionVersion) -> Self {
        self.ignition_version = version;
        self
    }

    /// Sets the MachineConfig size limit in bytes.
    pub fn max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// The config this generator renders.
    pub fn config(&self) -> &Day1Config {
        &self.config
    }

    fn binaries(&self) -> Result<Vec<EmbeddedBinary>, Error> {
        match &self.delivery {
            Delivery::Embedded { node_binaries } => embed_node_binaries(node_binaries),
            Delivery::Layered | Delivery::Image { .. } => Ok(vec![]),
        }
    }

    /// The Ignition config (JSON value).
    pub fn ignition(&self) -> Result<serde_json::Value, Error> {
        ignition::ignition_config(
            &self.config,
            &self.delivery,
            &self.binaries()?,
            self.bundle.as_ref(),
            self.ignition_version,
        )
    }

    /// The Ignition config as pretty JSON text, newline-terminated.
    pub fn ignition_json(&self) -> Result<String, Error> {
        let mut s = serde_json::to_string_pretty(&self.ignition()?).expect("JSON serializes");
        s.push('\n');
        Ok(s)
    }

    /// The MachineConfig as YAML; refused when larger than the size limit.
    pub fn machine_config_yaml(&self) -> Result<String, Error> {
        let mc = MachineConfig::new(
            self.config.name.as_str(),
            self.config.pool.as_str(),
            self.ignition()?,
        );
        let yaml = mc.to_yaml();
        if yaml.len() > self.max_bytes && self.bundle.is_some() {
            return Err(Error::TooLarge(format!(
                "MachineConfig {} with its bundle would be {} bytes, above the {}-byte limit (--max-bytes): MCO stores it in etcd and merges every MachineConfig of the pool into one rendered config, which recent MCO refuses above 1.5 MiB; carry the bundle at install time instead, in the Ignition config (-o ignition) or in an initrd appended to the initramfs (-o initrd), or drop --bundle and let the nodes pull (prestage with -o prestage)",
                self.config.name,
                yaml.len(),
                self.max_bytes
            )));
        }
        if yaml.len() > self.max_bytes {
            return Err(Error::TooLarge(format!(
                "MachineConfig {} would be {} bytes, above the {}-byte limit (--max-bytes): MCO stores it in etcd and merges it into the pool's rendered config; deliver the node binaries with --node-image REF@sha256:<digest> (the node image) or --delivery layered (the OS image) instead",
                self.config.name,
                yaml.len(),
                self.max_bytes
            )));
        }
        Ok(yaml)
    }
}
