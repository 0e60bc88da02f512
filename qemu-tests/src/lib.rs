//! QEMU harness (see vm.rs).
