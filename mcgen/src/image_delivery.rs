// SPDX-License-Identifier: Apache-2.0
//! The image delivery: the MachineConfig pins the node image by digest and carries a small
//! install unit that puts the binaries into `/usr/local/bin` with the node's own podman (see
//! `install/kmod-day1-install.sh`); the prestage DaemonSet runs the same script from the image.

use kmod_day1_contract::ImageRef;

use crate::Error;

/// The install script, as in `mcgen/src/install/kmod-day1-install.sh`.
pub const INSTALL_SCRIPT: &str = include_str!("install/kmod-day1-install.sh");
/// Where the MachineConfig puts the install script on the node (run with `/bin/sh`, so it
/// needs no executable label).
pub const INSTALL_SCRIPT_PATH: &str = "/etc/kmod-day1/kmod-day1-install.sh";
/// The install unit's name.
pub const INSTALL_UNIT_NAME: &str = "kmod-day1-install.service";
/// The install unit's text, with `@INSTALL_SCRIPT@` and `@NODE_IMAGE@` to fill in.
pub const INSTALL_UNIT_TEMPLATE: &str = include_str!("install/kmod-day1-install.service");
/// Where the install script records what it installed (in the store).
pub const NODE_BINARIES_RECORD: &str = "/var/lib/kmod-day1/node-binaries.json";

/// The node image, pinned by digest: the node runs what it holds as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeImage(ImageRef);

impl NodeImage {
    /// Parses `REF@sha256:…`; a reference without a digest is refused.
    pub fn parse(value: &str) -> Result<Self, Error> {
        let r = ImageRef::parse(value).map_err(|e| Error::Invalid(format!("--node-image: {e}")))?;
        if !r.is_pinned() {
            return Err(Error::Invalid(format!(
                "--node-image {value} has no digest: the nodes run it as root, so pin it as REF@sha256:<digest> (`make node-image` prints the digest)"
            )));
        }
        Ok(Self(r))
    }

    /// `registry/repository@sha256:…` (a tag beside the digest is dropped: the digest decides).
    pub fn reference(&self) -> String {
        format!(
            "{}@{}",
            self.0.name(),
            self.0.digest.as_deref().expect("pinned")
        )
    }
}

/// The install unit for `node_image`.
pub fn install_unit(node_image: &NodeImage) -> String {
    INSTALL_UNIT_TEMPLATE
        .replace("@INSTALL_SCRIPT@", INSTALL_SCRIPT_PATH)
        .replace("@NODE_IMAGE@", &node_image.reference())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digest_required() {
        let e = NodeImage::parse("quay.io/acme/kmod-day1-node:0.1.0").unwrap_err();
        assert!(e.to_string().contains("has no digest"), "{e}");
        let i = NodeImage::parse(&format!("quay.io/acme/kmod-day1-node:0.1.0@{DIGEST}")).unwrap();
        assert_eq!(
            i.reference(),
            format!("quay.io/acme/kmod-day1-node@{DIGEST}")
        );
        assert!(NodeImage::parse("quay.io/acme/x@sha256:abc").is_err());
    }

    #[test]
    fn unit_runs_the_script_with_the_image() {
        let i = NodeImage::parse(&format!("reg.local/n@{DIGEST}")).unwrap();
        let u = install_unit(&i);
        assert!(u.contains(&format!(
            "\nExecStart=/bin/sh /etc/kmod-day1/kmod-day1-install.sh reg.local/n@{DIGEST}\n"
        )));
        assert!(!u.contains('@') || !u.contains("@NODE_IMAGE@"));
    }
}
