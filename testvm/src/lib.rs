// SPDX-License-Identifier: Apache-2.0
//! The end-to-end harness of kmod-day1: a Debian VM under QEMU (TCG), a real registry, real
//! kmod images, the real Ignition, and the real node binaries, asserted from the serial log.

pub mod apt_mirror;
pub mod bench;
pub mod bls_boot;
pub mod cluster_state;
pub mod cmd;
pub mod dirs;
pub mod guest_overlay;
pub mod ignition_apply;
pub mod kmod_image;
pub mod kubelet_standin;
pub mod lab;
pub mod markers;
pub mod mcd_standin;
pub mod modules_build;
pub mod node_bins;
pub mod node_config;
pub mod node_image;
pub mod ostree_image;
pub mod qemu;
pub mod registry;
pub mod scenarios;
pub mod vm_image;
