//! The network agent (issue 19, seed 000): Open vSwitch bridges and ports
//! made through NetworkManager, every change inside an NM checkpoint,
//! interfaces named the way Proxmox accepts ([`naming`]), configured by
//! /bpi/config/system/net.toml ([`config`]), and OVS's own view read from
//! ovsdb ([`ovs`]).

pub mod config;
pub mod naming;
pub mod ovs;
