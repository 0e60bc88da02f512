//! vPod ports (seed 003, "vPod Network Management"): the seed's fixed port
//! ranges ([`ranges`]), an allocator over them that persists on the data
//! partition and takes a file lock around every change ([`alloc`]), what
//! the kernel says is listening ([`sockets`]), and the seed's health score
//! for a service holding a port ([`health`]).

pub mod alloc;
pub mod health;
pub mod ranges;
pub mod sockets;
