//! The bpi-os image pipeline. [`build::build`] runs it; each module is one
//! stage, built from files (no loop devices, no mounts on the host).

pub mod bios;
pub mod boot;
pub mod build;
pub mod bundle;
pub mod compare;
pub mod disk;
pub mod packages;
pub mod pcr;
pub mod pe;
pub mod rootfs;
pub mod secureboot;
pub mod sizes;
pub mod sources;
pub mod stage;
pub mod verity;

pub use bpi_formats::{gpt, manifest, slots};
