//! First-boot provisioning, read natively (no cloud-init in the image):
//! the NoCloud documents Proxmox writes on its cloud-init drive, the same
//! documents as systemd credentials, or as the installer leaves them.
//! Read ([`source`]), checked whole with file:line findings ([`check`]),
//! planned ([`plan`]) and applied once per instance-id ([`run`]).

pub mod apply;
pub mod check;
pub mod finding;
pub mod hostkeys;
pub mod network;
pub mod plan;
pub mod run;
pub mod settings;
pub mod source;
pub mod userdata;
pub mod yaml;
