//! A/B updates (docs/updates.md). [`fetch`] brings a bundle's signed
//! metadata and files into a download directory (resuming, sizes enforced),
//! [`keys`] checks the signature, [`slots`] reads the boot disk's slots and
//! plans what an update changes (pure), [`apply`] carries the plan out, and
//! [`esp`] handles the UKIs systemd-boot counts tries on, [`bios`] the
//! kernels, grub.cfg and grubenv of the BIOS path beside them.

pub mod apply;
pub mod bios;
pub mod esp;
pub mod fetch;
pub mod health;
pub mod keys;
pub mod slots;
